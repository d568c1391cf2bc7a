#!/usr/bin/env bash
# Entrypoint of every Airflow container in compose mode.
#
# SimpleAuthManager reads its users from [core] simple_auth_manager_users and their
# passwords from a JSON file ({"user": "password"}); left alone, it generates random
# passwords and prints them to the log. Write the file from AIRFLOW_ADMIN_PASSWORD
# instead, on every start (so rotating the secret in .env takes effect), then hand over
# to the image's own entrypoint.
set -euo pipefail

passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
umask 077
python - "$passwords_file" <<'PY'
import json
import os
import sys

with open(sys.argv[1], "w", encoding="utf-8") as handle:
    json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, handle)
PY

exec /entrypoint "$@"
