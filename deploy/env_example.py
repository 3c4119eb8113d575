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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ukr_hw.settings import Settings  # noqa: E402

COMPOSE = """\
# ukr-hw environment: copy to .env and replace every "change-me" value before `docker compose up`.
# pydantic-settings reads .env too (UKR_HW_* only); compose reads the whole file.

# --- docker compose (docker-compose.yml) ------------------------------------------------------------------------
POSTGRES_PASSWORD=change-me-postgres
MLFLOW_DB_PASSWORD=change-me-mlflow-db
PREFECT_DB_PASSWORD=change-me-prefect-db
OPTUNA_DB_PASSWORD=change-me-optuna-db
LINEAGE_DB_PASSWORD=change-me-lineage-db
MINIO_ROOT_USER=minio-admin
MINIO_ROOT_PASSWORD=change-me-minio-root
# the applications' non-root S3 key (created by deploy/minio/init.sh)
S3_ACCESS_KEY_ID=ukr-hw-app
S3_SECRET_ACCESS_KEY=change-me-s3-secret
UKR_HW_ADMIN_TOKEN=change-me-admin-token
UKR_HW_S3_REGION=us-east-1
# host ports
MINIO_PORT=9000
MINIO_CONSOLE_PORT=9001
MLFLOW_PORT=5000
PREFECT_PORT=4200
API_PORT=3000
UI_PORT=7860
"""

#: set in the compose block above (uncommented); not repeated below
IN_COMPOSE = {"admin_token", "s3_region"}


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
