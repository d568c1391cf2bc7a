# syntax=docker/dockerfile:1
# Two images from one file (docker-compose.yml builds both):
#   airflow  the Airflow components; also runs the Python-task ml_pipeline DAG
#   ml       the ML image: `mlflow server` in compose, and what the DockerOperator DAG runs

ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
ARG PYTHON_IMAGE=python:3.11-slim

# --- airflow ---------------------------------------------------------------------------
FROM ${AIRFLOW_IMAGE} AS airflow

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
ENV NLTK_DATA=/opt/airflow/config/nltk_data \
    RAKUTEN_PROJECT_ROOT=/opt/airflow

# --- ml --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS ml

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN useradd --create-home --uid 10001 --user-group app

COPY requirements_ml.txt /tmp/requirements_ml.txt
RUN pip install -r /tmp/requirements_ml.txt && rm /tmp/requirements_ml.txt

COPY pyproject.toml README.md /tmp/rakuten-mlops/
COPY src /tmp/rakuten-mlops/src
RUN pip install --no-deps /tmp/rakuten-mlops && rm -rf /tmp/rakuten-mlops

WORKDIR /app
COPY --chown=app:app config/nltk_data /app/config/nltk_data
# Mount points for the DockerOperator; writable by the non-root user when empty.
RUN mkdir raw_data processed_data models && chown app:app raw_data processed_data models

# Outside local mode the package refuses placeholder or default secrets.
ENV RAKUTEN_PROJECT_ROOT=/app \
    RAKUTEN_MODE=compose \
    NLTK_DATA=/app/config/nltk_data

USER app
ENTRYPOINT ["python", "-m", "rakuten_mlops"]
