# syntax=docker/dockerfile:1
# Two images from one file (docker-compose.yml builds both):
#   airflow  the Airflow components; also runs the Python-task ml_pipeline DAG
#   ml       the ML image: `mlflow server` in compose, and what the DockerOperator DAG runs
# The base images are build arguments: the public images by default; where no registry is
# reachable, `scripts/make-base-image.sh` makes a python:3.11-slim stand-in from Debian's
# packages (--build-arg PYTHON_IMAGE=localhost/python:3.11-slim). The airflow target needs
# the apache/airflow image, which cannot be made that way.

ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
ARG PYTHON_IMAGE=python:3.11-slim

# --- airflow ---------------------------------------------------------------------------
FROM ${AIRFLOW_IMAGE} AS airflow

# The stage containers' private settings files (rakuten_mlops.containers): a new named
# volume mounted here takes this folder's owner and mode, writable by the worker's group.
USER root
RUN mkdir -p /run/rakuten/stage-env && chown airflow:root /run/rakuten/stage-env \
    && chmod 0770 /run/rakuten/stage-env

# The base image installs packages as the airflow user (into ~/.local), never as root.
USER airflow
COPY --chown=airflow:root requirements.txt requirements_ml.txt /tmp/requirements/
RUN pip install --no-cache-dir \
        -r /tmp/requirements/requirements.txt \
        -r /tmp/requirements/requirements_ml.txt

# Dependencies are pinned above; the package itself goes in last so code changes do not
# invalidate the (slow) dependency layer.
COPY --chown=airflow:root pyproject.toml README.md /tmp/rakuten-mlops/
COPY --chown=airflow:root src /tmp/rakuten-mlops/src
RUN pip install --no-cache-dir --no-deps /tmp/rakuten-mlops \
    && rm -rf /tmp/rakuten-mlops /tmp/requirements

# Offline NLTK corpus (nltk.download needs the internet). Compose also mounts config/
# over this path; the copy keeps the image usable on its own.
COPY --chown=airflow:root config/nltk_data /opt/airflow/config/nltk_data
# Airflow's start-up hook (rakuten_mlops.localstack.task_supervisor), as in local mode.
COPY --chown=airflow:root config/airflow/python /opt/airflow/config/airflow/python
ENV NLTK_DATA=/opt/airflow/config/nltk_data \
    RAKUTEN_PROJECT_ROOT=/opt/airflow \
    PYTHONPATH=/opt/airflow/config/airflow/python

# --- ml: the package, built apart ------------------------------------------------------
# Installed into a folder of its own, which the ml image copies as a small last layer: a
# code change rebuilds neither the dependencies nor their layer. (Files of the build
# context reach RUN steps by COPY: podman 4.3's buildah does not see a change in a bind
# mount of the context when it reuses a cached step.)
FROM ${PYTHON_IMAGE} AS ml-package
COPY pyproject.toml README.md /tmp/rakuten-mlops/
COPY src /tmp/rakuten-mlops/src
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=cache,target=/root/.cache/uv \
    pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --target /tmp/uv "uv==0.13.9" \
    && UV_CACHE_DIR=/root/.cache/uv UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy \
        /tmp/uv/bin/uv pip install --python "$(command -v python3)" --no-deps \
        --target /opt/package /tmp/rakuten-mlops

# --- ml --------------------------------------------------------------------------------
# Dependencies go into a virtual environment made by uv, pinned by constraints.txt. uv
# lives in /tmp for the length of that one step, and pip's and uv's download caches are
# cache mounts (kept by the engine between builds, so a build from a clean layer cache
# downloads nothing again): neither ends in a layer, and the environment is written once,
# in place (no second copy of it from a build stage).
FROM ${PYTHON_IMAGE} AS ml

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 10001 --user-group app

# uv venv, not `python -m venv`: Debian's python3.11 (the locally made base) has none.
# Bytecode is compiled once here: the image's users never write it (PYTHONDONTWRITEBYTECODE),
# and without it every container would compile what it imports at each start.
COPY requirements_ml.txt constraints.txt /tmp/requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=cache,target=/root/.cache/uv \
    pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --target /tmp/uv "uv==0.13.9" \
    && export UV_CACHE_DIR=/root/.cache/uv UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy \
        UV_PYTHON_DOWNLOADS=never \
    && /tmp/uv/bin/uv venv --python "$(command -v python3)" /opt/venv \
    && /tmp/uv/bin/uv pip install -c /tmp/requirements/constraints.txt \
        -r /tmp/requirements/requirements_ml.txt \
    && rm -rf /tmp/uv /tmp/requirements

COPY --from=ml-package /opt/package/ /opt/venv/lib/python3.11/site-packages/

WORKDIR /app
COPY --chown=app:app config/nltk_data /app/config/nltk_data
# The shipped training profiles (`train --profile quick|full`).
COPY --chown=app:app config/training /app/config/training
# Mount points for the DockerOperator; writable by the non-root user when empty.
RUN mkdir raw_data processed_data models && chown app:app raw_data processed_data models

# Outside local mode the package refuses placeholder or default secrets.
ENV RAKUTEN_PROJECT_ROOT=/app \
    RAKUTEN_MODE=compose \
    NLTK_DATA=/app/config/nltk_data

USER app
ENTRYPOINT ["python", "-m", "rakuten_mlops"]
