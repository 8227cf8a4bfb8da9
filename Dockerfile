# specprune image: the API (`specprune serve`) and the workers (`specprune worker`) share it.
# torch is pinned and comes from PyTorch's own index: CPU wheels by default; for GPU workers build with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t specprune:gpu .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPECPRUNE_HOME=/data

WORKDIR /srv/specprune
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

# Dependencies first (cached while only the code changes), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p core app worker client \
    && touch core/__init__.py app/__init__.py worker/__init__.py client/__init__.py \
    && pip install . && pip uninstall -y specprune
COPY alembic.ini ./
COPY migrations ./migrations
COPY core ./core
COPY app ./app
COPY worker ./worker
COPY client ./client
# Editable: the code stays beside migrations/ (which `specprune db upgrade` reads).
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 specprune \
    && mkdir -p /data/artifacts && chown -R specprune /data

USER specprune
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
CMD ["specprune", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
