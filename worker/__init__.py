"""specprune workers: the Celery app, the job task, the sandboxed compression process, the reaper.

Nothing here imports the web layer (``app.api``) nor torch: torch is imported only inside the
sandboxed child process, so CUDA is never initialised in a worker before its pool forks.
"""
