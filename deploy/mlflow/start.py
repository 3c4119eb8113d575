"""Start the MLflow server of the compose stack behind MLflow's basic-auth app (the mlflow image's entrypoint).

    python /opt/ukr-hw/start.py [mlflow server options …]   # e.g. --host=0.0.0.0 --port=5000 --workers=2

It refuses to start while a secret is missing or still a ``change-me`` placeholder from ``.env.example``, writes
the auth app's config (users and permissions in their own PostgreSQL database, ``mlflow_auth``, made by
deploy/postgres/init-databases.sh) to a private file, and ``exec``s
``mlflow server --app-name basic-auth --backend-store-uri … <options>``. The database password is URL-encoded here,
so it may hold any character.

Environment: ``MLFLOW_DB_PASSWORD`` (role ``mlflow``), ``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD``
(the admin user MLflow creates on the first start; at least 12 characters), ``MLFLOW_FLASK_SERVER_SECRET_KEY``
(the auth app's CSRF key), ``AWS_*`` (the MLflow role's S3 key for the artifact bucket).
Optional: ``MLFLOW_DB_HOST`` (postgres), ``MLFLOW_DB_PORT`` (5432), ``MLFLOW_DB_USER`` (mlflow), ``MLFLOW_DB_NAME``
(mlflow), ``MLFLOW_AUTH_DB_NAME`` (mlflow_auth), ``MLFLOW_AUTH_DEFAULT_PERMISSION`` (READ: every signed-in user may
read; only a run's or a model's creator, or the admin, may change it, so the API's read-only user cannot move the
champion alias).
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

PLACEHOLDER = "change-me"
REQUIRED = (
    "MLFLOW_DB_PASSWORD",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


def problems(env: Mapping[str, str], names: tuple[str, ...] = REQUIRED) -> list[str]:
    """What is wrong with the environment: missing values and ``change-me`` placeholders, one line each."""
    out = []
    for name in names:
        value = env.get(name, "")
        if not value:
            out.append(f"{name} is not set: set it in .env (see .env.example)")
        elif PLACEHOLDER in value:
            out.append(f"{name} is still the placeholder {value!r} from .env.example: set a real value in .env")
    return out


def database_url(env: Mapping[str, str], database: str) -> str:
    user = urllib.parse.quote(env.get("MLFLOW_DB_USER", "mlflow"), safe="")
    password = urllib.parse.quote(env["MLFLOW_DB_PASSWORD"], safe="")
    host = env.get("MLFLOW_DB_HOST", "postgres")
    port = env.get("MLFLOW_DB_PORT", "5432")
    return f"postgresql+psycopg://{user}:{password}@{host}:{port}/{database}"


def auth_config(env: Mapping[str, str]) -> str:
    """The basic-auth app's ini (configparser interpolates ``%``, hence the doubling)."""
    url = database_url(env, env.get("MLFLOW_AUTH_DB_NAME", "mlflow_auth")).replace("%", "%%")
    permission = env.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ")
    return (
        "[mlflow]\n"
        f"default_permission = {permission}\n"
        f"database_uri = {url}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
    )


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def command(env: Mapping[str, str], extra: list[str]) -> list[str]:
    backend = database_url(env, env.get("MLFLOW_DB_NAME", "mlflow"))
    return ["mlflow", "server", "--app-name", "basic-auth", f"--backend-store-uri={backend}", *extra]


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    wrong = problems(env)
    if wrong:
        print("mlflow: refusing to start:\n  " + "\n  ".join(wrong), file=sys.stderr)
        return 2
    config = Path(env.get("MLFLOW_AUTH_CONFIG_PATH") or "/tmp/mlflow-auth/basic_auth.ini")
    write_private(config, auth_config(env))
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    cmd = command(env, list(sys.argv[1:] if argv is None else argv))
    shown = [re.sub(r"(postgresql\+psycopg://[^:/]*):[^@]*@", r"\1:***@", a) for a in cmd]
    print("mlflow: " + " ".join(shown), flush=True)
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
