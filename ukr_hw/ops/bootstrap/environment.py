"""Bootstrap steps 1 and 2: refuse placeholders and missing servers; keep MLflow's users (basic-auth app)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ukr_hw.ops.bootstrap.common import BootstrapError, log

PLACEHOLDER = "change-me"
#: (username variable, default username, password variable) of the MLflow users the bootstrap keeps
MLFLOW_USERS = (
    ("MLFLOW_WORKER_USERNAME", "ukr-hw-worker", "MLFLOW_WORKER_PASSWORD"),
    ("MLFLOW_API_USERNAME", "ukr-hw-api", "MLFLOW_API_PASSWORD"),
)

# --- 1. the environment ----------------------------------------------------------------------------------------


def placeholder_problems(env: Mapping[str, str]) -> list[str]:
    """One line for each variable whose value still holds the ``change-me`` placeholder of .env.example."""
    return [
        f"{name} is still the placeholder {value!r} from .env.example: set a real value in .env"
        for name, value in sorted(env.items())
        if PLACEHOLDER in value
    ]


def settings_placeholder_problems(settings: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line for each ukr-hw setting (``UKR_HW_<NAME>``, from the environment or ``.env``) that still holds the
    ``change-me`` placeholder: ``.env.example`` copied for compose would otherwise hand the native stack its
    placeholder admin token or S3 key."""
    environ = os.environ if environ is None else environ
    problems = []
    for name in sorted(type(settings).model_fields):
        value = getattr(settings, name)
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if not isinstance(text, str | Path) or PLACEHOLDER not in str(text):
            continue
        var = f"UKR_HW_{name.upper()}"
        where = "the environment" if var in environ else ".env"
        problems.append(
            f"{var} is still the placeholder {str(text)!r} (from {where}): set a real value, or unset it "
            "(`ukr-hw stack` generates its own secrets)"
        )
    return problems


def check_environment(env: Mapping[str, str], tracking_uri: str | None) -> None:
    """Raise :class:`BootstrapError` listing every placeholder, and a missing Prefect or MLflow server.

    ``tracking_uri`` None: no MLflow step will run (``ukr-hw stack up`` without mlflow), so it is not checked.
    """
    problems = placeholder_problems(env)
    if not env.get("PREFECT_API_URL"):
        problems.append("PREFECT_API_URL is not set: the bootstrap registers deployments on a Prefect server")
    if tracking_uri is not None and not tracking_uri.startswith(("http://", "https://")):
        problems.append(
            f"UKR_HW_MLFLOW_TRACKING_URI is {tracking_uri!r}: the bootstrap needs an MLflow server (http://…)"
        )
    if problems:
        raise BootstrapError("refusing to run:\n  " + "\n  ".join(problems))


# --- 2. MLflow users -------------------------------------------------------------------------------------------


def ensure_mlflow_users(tracking_uri: str, env: Mapping[str, str], http: Any = None) -> list[str]:
    """Create (or re-password) the MLflow users named in the environment, as MLflow's admin. Returns what it did."""
    admin_password = env.get("MLFLOW_ADMIN_PASSWORD")
    if not admin_password:
        log("MLFLOW_ADMIN_PASSWORD not set: MLflow users left alone (a server without the basic-auth app?)")
        return []
    import httpx

    admin = (env.get("MLFLOW_ADMIN_USERNAME") or "admin", admin_password)
    base = tracking_uri.rstrip("/")
    client = http or httpx.Client(timeout=30.0)
    done = []
    for user_var, default_user, password_var in MLFLOW_USERS:
        password = env.get(password_var)
        if not password:
            continue
        user = env.get(user_var) or default_user
        got = client.get(f"{base}/api/2.0/mlflow/users/get", params={"username": user}, auth=admin)
        if got.status_code in (401, 403):
            raise BootstrapError(
                f"MLflow at {base} refused the admin credentials (MLFLOW_ADMIN_USERNAME / MLFLOW_ADMIN_PASSWORD); "
                "the admin's password is set on the server's FIRST start only: use the one it was created with"
            )
        if got.status_code == 200:
            me = client.get(f"{base}/api/2.0/mlflow/users/current", auth=(user, password))
            if me.status_code == 200:
                done.append(f"{user}: exists")
                continue
            r = client.patch(
                f"{base}/api/2.0/mlflow/users/update-password",
                json={"username": user, "password": password},
                auth=admin,
            )
            _raise_for(r, f"setting the password of MLflow user {user} ({password_var})")
            done.append(f"{user}: password updated")
        elif got.status_code == 404:
            r = client.post(
                f"{base}/api/2.0/mlflow/users/create", json={"username": user, "password": password}, auth=admin
            )
            _raise_for(r, f"creating MLflow user {user} ({password_var}, at least 12 characters)")
            done.append(f"{user}: created")
        else:
            _raise_for(got, f"looking up MLflow user {user}")
    for line in done:
        log(f"MLflow user {line}")
    return done


def _raise_for(response: Any, what: str) -> None:
    if response.status_code >= 400:
        raise BootstrapError(f"{what} failed: HTTP {response.status_code} {response.text[:500]}")
