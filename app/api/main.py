"""Collects the API's routers."""

from fastapi import APIRouter

from app.api.routes import datasets, health, jobs

api_router = APIRouter()
api_router.include_router(jobs.router)
api_router.include_router(datasets.router)
api_router.include_router(health.router)
