# Licchavi scoring service images, one target per role:
#   api        HTTP API, no torch (the API never imports it), also runs `licchavi db upgrade`
#   worker-cpu Celery worker on the `cpu` queue, the engine on NumPy/SciPy, no torch
#   worker-gpu Celery worker on the `gpu` queue, the `gpu` extra: CUDA build of torch
#   flower     Celery monitoring UI
# Build one with e.g. `docker build --target worker-cpu -t licchavi-service:worker-cpu .`

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DATA_DIR=/data

# The runtime user owns only /data; the code and the virtualenv stay root-owned and read-only.
RUN groupadd --system --gid 10001 licchavi \
    && useradd --system --uid 10001 --gid licchavi --home-dir /data --shell /usr/sbin/nologin licchavi \
    && mkdir -p /data \
    && chown licchavi:licchavi /data \
    && python -m venv /opt/venv

WORKDIR /app

# Dependencies only, read from pyproject.toml without the source, so this layer is rebuilt when
# the dependency list changes and not on every code change. Every role serves or schedules
# sweeps, so the `sweeps` extra (Optuna, SciPy, scikit-learn) is part of the base.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['sweeps']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------
# The `ml` extra: the engine on the CPU (NumPy/SciPy), no torch.
FROM base AS ml-base
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['ml']))" \
        > /tmp/requirements-ml.txt \
    && pip install -r /tmp/requirements-ml.txt \
    && rm /tmp/requirements-ml.txt

# ---------------------------------------------------------------------------------------------
FROM base AS api

# Editable install: `licchavi db upgrade` finds alembic.ini and alembic/ beside the package.
COPY . .
RUN pip install --no-deps -e .

USER licchavi
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["licchavi", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]

# ---------------------------------------------------------------------------------------------
FROM ml-base AS worker-cpu

COPY . .
RUN pip install --no-deps -e .

USER licchavi
# Celery replies to a ping only when its main loop is alive and connected to the broker.
HEALTHCHECK --interval=60s --timeout=20s --start-period=60s --retries=3 \
    CMD celery -A workers.celery_app:celery_app inspect ping --destination "celery@$HOSTNAME" --timeout 10 >/dev/null || exit 1
CMD ["licchavi", "worker", "--queues", "cpu", "--concurrency", "2"]

# ---------------------------------------------------------------------------------------------
FROM ml-base AS worker-gpu

# The `gpu` extra, torch pinned within its range. PyPI's Linux x86_64 torch wheel is the CUDA
# build (CUDA libraries come as pip dependencies, about 2.7 GB of downloads); the host only needs
# the NVIDIA driver and container toolkit. Point TORCH_GPU_INDEX_URL at a
# download.pytorch.org/whl/cuXXX index to pick another CUDA version.
ARG TORCH_VERSION=2.13.0
ARG TORCH_GPU_INDEX_URL=https://pypi.org/simple
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu']))" \
        > /tmp/requirements-gpu.txt \
    && pip install -r /tmp/requirements-gpu.txt "torch==${TORCH_VERSION}" --index-url "${TORCH_GPU_INDEX_URL}" \
    && rm /tmp/requirements-gpu.txt

COPY . .
RUN pip install --no-deps -e .

USER licchavi
HEALTHCHECK --interval=60s --timeout=20s --start-period=60s --retries=3 \
    CMD celery -A workers.celery_app:celery_app inspect ping --destination "celery@$HOSTNAME" --timeout 10 >/dev/null || exit 1
# solo pool: CUDA is initialised in the worker process itself, never in a forking parent.
CMD ["licchavi", "worker", "--queues", "gpu", "--pool", "solo"]

# ---------------------------------------------------------------------------------------------
FROM base AS flower

# Flower is a monitoring tool, not a service dependency: it lives in this image only.
ARG FLOWER_VERSION=2.2.0
RUN pip install "flower==${FLOWER_VERSION}"

COPY . .
RUN pip install --no-deps -e .

USER licchavi
EXPOSE 5555
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5555/healthcheck', timeout=4)"]
CMD ["celery", "-A", "workers.celery_app:celery_app", "flower", "--address=0.0.0.0", "--port=5555"]
