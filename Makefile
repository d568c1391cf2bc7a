# Two commands for a fresh machine: `make demo` and `make test`. Both run `make setup`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
CLI   := $(PY) -m rakuten_mlops
STAMP := $(VENV)/.installed
REQUIREMENTS := requirements.txt requirements_ml.txt requirements_dev.txt constraints.txt pyproject.toml
# pgAdmin 4 (local mode's database console) in a virtualenv of its own: its pins clash
# with Airflow's (rakuten_mlops/localstack/consoles.py runs it).
PGADMIN_VENV  := .venv-pgadmin
PGADMIN_STAMP := $(PGADMIN_VENV)/.installed

.PHONY: setup up down status demo test bench lint clean-stack ml-image k8s-secrets

# init-env runs every time: it creates .env once with fresh secrets, then only adds
# settings a newer .env.example introduced (never rotates: that would lock out the data).
setup: $(STAMP) $(PGADMIN_STAMP)
	@$(CLI) init-env

# Bytecode is compiled once at install: where PYTHONDONTWRITEBYTECODE is set, every
# Airflow task, test subprocess and service would otherwise recompile all it imports.
$(STAMP): $(REQUIREMENTS) scripts/install-system-deps.sh
	scripts/install-system-deps.sh
	test -x $(PY) || uv venv --quiet --python 3.11 $(VENV)
	VIRTUAL_ENV=$(VENV) uv pip install --quiet --compile-bytecode -c constraints.txt \
		-r requirements.txt -r requirements_ml.txt -r requirements_dev.txt -e .
	touch $@

$(PGADMIN_STAMP): requirements_pgadmin.txt
	test -x $(PGADMIN_VENV)/bin/python || uv venv --quiet --python 3.11 $(PGADMIN_VENV)
	VIRTUAL_ENV=$(PGADMIN_VENV) uv pip install --quiet --compile-bytecode -r requirements_pgadmin.txt
	touch $@


up: setup
	$(CLI) stack up

down:
	@if [ -x $(PY) ]; then $(CLI) stack down; else echo "nothing to stop (no venv)"; fi

status: setup
	$(CLI) stack status

demo: setup
	$(CLI) stack up
	$(CLI) airflow dags test prepare_data > .stack/logs/demo-prepare_data.log 2>&1 \
		|| { tail -40 .stack/logs/demo-prepare_data.log; \
		     echo "task logs: the Airflow UI, or .stack/airflow/logs/dag_id=prepare_data/"; exit 1; }
	@echo "prepare_data succeeded (run log: .stack/logs/demo-prepare_data.log, task logs in the Airflow UI); the lake now holds:"
	$(CLI) lake-summary
	$(CLI) airflow dags test ml_pipeline --conf '{"profile": "quick"}' \
		> .stack/logs/demo-ml_pipeline.log 2>&1 \
		|| { tail -60 .stack/logs/demo-ml_pipeline.log; \
		     echo "task logs: the Airflow UI, or .stack/airflow/logs/dag_id=ml_pipeline/"; exit 1; }
	@echo "ml_pipeline succeeded (run log: .stack/logs/demo-ml_pipeline.log, task logs in the Airflow UI); the champion:"
	$(CLI) champion
	$(CLI) demo-predict
	@echo "data_quality: checking the batch just loaded and today's predictions..."
	$(CLI) airflow dags test data_quality > .stack/logs/demo-data_quality.log 2>&1 \
		|| { tail -40 .stack/logs/demo-data_quality.log; \
		     echo "task logs: the Airflow UI, or .stack/airflow/logs/dag_id=data_quality/"; exit 1; }
	$(CLI) quality-summary

# Two workers on one stack (tests/support/workers.py): most tests wait on services.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope

bench: up
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lint: setup
	$(VENV)/bin/ruff check src dags tests bench

# Container mode (ml_pipeline_docker): the ML image, built by local mode's podman on the
# locally made base where no registry is reachable (README: "Container mode").
ML_IMAGE ?= rakuten-mlops/ml:latest
ml-image: setup
	$(CLI) ml-image --tag $(ML_IMAGE)

# Deletes every local-mode database, object and log (asks first).
clean-stack: down
	@read -p "delete .stack/ (all local data)? [y/N] " ok && [ "$$ok" = y ] && rm -rf .stack

# Kubernetes (deploy/k8s): the overlay's Secret source from .env (0600, git-ignored).
k8s-secrets: setup
	$(CLI) k8s-secrets
