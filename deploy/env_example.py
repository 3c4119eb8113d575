"""Write ``.env.example`` from the settings model, so it lists every setting (run after adding a field).

    .venv/bin/python deploy/env_example.py          # rewrite .env.example
    .venv/bin/python deploy/env_example.py --check  # exit 1 if it is out of date (CI / tests)

The first block holds the variables ``docker-compose.yml`` interpolates (placeholders, never real secrets); the
second every ``UKR_HW_*`` setting with its description, commented out at its default.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ukr_hw.settings import Settings

REPO = Path(__file__).resolve().parents[1]

COMPOSE = """\
# ukr-hw environment: copy to .env and replace every "change-me" value before `docker compose up`.
# pydantic-settings reads .env too (UKR_HW_* only); compose reads the whole file.

# --- docker compose (docker-compose.yml, docs/deploy.md) --------------------------------------------------------
# Every secret below is required: compose refuses to start while one is missing, and the init scripts and the
# bootstrap refuse a value that still holds "change-me". Use long random values, e.g. `openssl rand -hex 24`
# (hex: the passwords go into database URLs). MLflow's passwords need at least 12 characters.
POSTGRES_PASSWORD=change-me-postgres
MLFLOW_DB_PASSWORD=change-me-mlflow-db
PREFECT_DB_PASSWORD=change-me-prefect-db
OPTUNA_DB_PASSWORD=change-me-optuna-db
LINEAGE_DB_PASSWORD=change-me-lineage-db
MINIO_ROOT_USER=minio-admin
MINIO_ROOT_PASSWORD=change-me-minio-root
# one S3 key per role, least privilege (made by deploy/minio/init.sh; policies in deploy/minio/policies/):
# the UI may only put feedback samples, the worker reads feedback and reads/writes the DVC remote, MLflow has its
# artifact bucket; the API has no S3 key
S3_UI_ACCESS_KEY_ID=ukr-hw-ui
S3_UI_SECRET_KEY=change-me-s3-ui
S3_WORKER_ACCESS_KEY_ID=ukr-hw-worker
S3_WORKER_SECRET_KEY=change-me-s3-worker
S3_MLFLOW_ACCESS_KEY_ID=ukr-hw-mlflow
S3_MLFLOW_SECRET_KEY=change-me-s3-mlflow
# MLflow's basic-auth app: the admin (created on the server's first start), the CSRF key of its Flask app, and the
# users the bootstrap creates: the worker's (trains, registers, promotes) and the API's (read-only)
MLFLOW_ADMIN_USERNAME=admin
MLFLOW_ADMIN_PASSWORD=change-me-mlflow-admin
MLFLOW_FLASK_SECRET_KEY=change-me-mlflow-flask-secret
MLFLOW_WORKER_USERNAME=ukr-hw-worker
MLFLOW_WORKER_PASSWORD=change-me-mlflow-worker
MLFLOW_API_USERNAME=ukr-hw-api
MLFLOW_API_PASSWORD=change-me-mlflow-api
# Prefect server auth: every client sends it (the Prefect UI asks for it)
PREFECT_AUTH_STRING=change-me-prefect-auth
# Bearer token of the API's POST /admin/reload (the retrain calls it)
UKR_HW_ADMIN_TOKEN=change-me-admin-token
UKR_HW_S3_REGION=us-east-1
# what the host sees: the sketchpad on UI_BIND:UI_PORT; the API on API_BIND:API_PORT only with the profile
# public-api (uncomment COMPOSE_PROFILES). 0.0.0.0 publishes on every interface: put TLS and a login in front.
UI_BIND=127.0.0.1
UI_PORT=7860
# COMPOSE_PROFILES=public-api
API_BIND=127.0.0.1
API_PORT=3000
# scaling out: API replicas behind http://api:3000 (and the api-gateway); each follows the champion alias by its
# registry poll every UKR_HW_RELOAD_INTERVAL_S seconds
API_REPLICAS=1
UKR_HW_RELOAD_INTERVAL_S=30
# the work pool whose weekly retrain schedule is active: ukr-hw-process, ukr-hw-docker or ukr-hw-kubernetes
RETRAIN_POOL=ukr-hw-process
# a webhook (Slack, Teams, any URL taking a POST) told when the weekly retrain fails; empty: no alert
ALERT_WEBHOOK_URL=
# tag of the images built here (ukr-hw, ukr-hw-mlflow)
APP_IMAGE_TAG=0.1.0
# host ports of the operator's UIs, only with deploy/compose.ops.yml (always on 127.0.0.1)
MLFLOW_PORT=5000
PREFECT_PORT=4200
MINIO_CONSOLE_PORT=9001
"""

#: set in the compose block above (uncommented); not repeated below
IN_COMPOSE = {"admin_token", "s3_region", "reload_interval_s"}


def _default(field) -> str:
    if field.default_factory is not None:
        return ""
    value = field.default
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps([str(v) for v in value])
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def render() -> str:
    lines = [COMPOSE, "# --- ukr-hw settings (ukr_hw/settings.py, env prefix UKR_HW_); defaults shown ---------------"]
    for name, field in Settings.model_fields.items():
        if name in IN_COMPOSE:
            continue
        if field.description:
            lines.append(f"# {field.description}")
        lines.append(f"# UKR_HW_{name.upper()}={_default(field)}")
    return "\n".join(lines) + "\n"


def main() -> int:
    target = REPO / ".env.example"
    text = render()
    if "--check" in sys.argv:
        if not target.exists() or target.read_text() != text:
            print(".env.example is out of date: run `.venv/bin/python deploy/env_example.py`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
