#!/bin/bash
# Runs once, on the first start of the PostgreSQL container (docker-entrypoint-initdb.d): one role and one database
# each for MLflow, Prefect, Optuna and the retrain lineage, and the database of MLflow's basic-auth app (users and
# permissions, owned by the mlflow role). Passwords come from the environment (.env), never from this file; a
# `change-me` placeholder from .env.example is refused.
# A volume made by an earlier version of this file lacks mlflow_auth; create it once by hand:
#   docker compose exec postgres createdb -U postgres -O mlflow mlflow_auth
set -euo pipefail

for var in POSTGRES_PASSWORD MLFLOW_DB_PASSWORD PREFECT_DB_PASSWORD OPTUNA_DB_PASSWORD LINEAGE_DB_PASSWORD; do
  value="${!var:-}"
  [ -n "$value" ] || { echo "init-databases: $var is not set: set it in .env (see .env.example)" >&2; exit 2; }
  case "$value" in
    *change-me*) echo "init-databases: $var is still the placeholder from .env.example: set a real value in .env" >&2
                 exit 2 ;;
  esac
done

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

# a second database for a role made by create()
create_owned() {
  local database="$1" owner="$2"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v database="$database" -v owner="$owner" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'owner')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \gexec
SQL
}

create mlflow "$MLFLOW_DB_PASSWORD"
create_owned mlflow_auth mlflow
create prefect "$PREFECT_DB_PASSWORD"
create optuna "$OPTUNA_DB_PASSWORD"
create lineage "$LINEAGE_DB_PASSWORD"
echo "created databases mlflow, mlflow_auth, prefect, optuna, lineage"
