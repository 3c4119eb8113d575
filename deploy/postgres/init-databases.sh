#!/bin/bash
# Runs once, on the first start of the PostgreSQL container (docker-entrypoint-initdb.d): one role and one database
# each for MLflow, Prefect, Optuna and the retrain lineage. Passwords come from the environment (.env), never from this file.
set -euo pipefail

create() {
  local name="$1" password="$2"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v name="$name" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'name', :'password')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'name') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') \gexec
SQL
}

create mlflow "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in .env}"
create prefect "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD in .env}"
create optuna "${OPTUNA_DB_PASSWORD:?set OPTUNA_DB_PASSWORD in .env}"
create lineage "${LINEAGE_DB_PASSWORD:?set LINEAGE_DB_PASSWORD in .env}"
echo "created databases mlflow, prefect, optuna, lineage"
