#!/usr/bin/env bash
# Run once by the postgres image, on an empty data directory only. The entrypoint has
# already created $POSTGRES_DB (the data lake) owned by $POSTGRES_USER; this adds the
# Airflow metadata and MLflow backend databases next to it, owned by the same role.

# The image's entrypoint sources this file when it is not executable: keep its options.
set -eo pipefail

for db in "${AIRFLOW_DB:?}" "${MLFLOW_DB:?}"; do
    psql --no-psqlrc -v ON_ERROR_STOP=1 \
        --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -v db="$db" -v owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec
SQL
done
