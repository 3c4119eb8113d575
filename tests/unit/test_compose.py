"""docker-compose.yml, deploy/, prefect.yaml and .env.example hang together, closed and least-privilege.

No Docker daemon here: static checks of the files, the init scripts and the bootstrap run against stubs, and
`docker compose config` (or Debian's `docker-compose config`) where one is installed.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
#: the file without its comment lines (which quote variables by way of example)
COMPOSE_CODE = re.sub(r"(?m)^\s*#.*$", "", COMPOSE_TEXT)
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
OPS = yaml.safe_load((REPO / "deploy" / "compose.ops.yml").read_text())
ENV_EXAMPLE = (REPO / ".env.example").read_text()
DEFINED = {m.group(1) for m in re.finditer(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE, re.M)}
PREFECT = yaml.safe_load((REPO / "prefect.yaml").read_text())
POLICIES = {p.stem: json.loads(p.read_text()) for p in (REPO / "deploy" / "minio" / "policies").glob("*.json")}
VAR = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING")
#: services that run once and exit
ONE_SHOT = {"minio-init", "bootstrap"}
#: the only services with host ports: the sketchpad, and the API's gateway (profile public-api)
PUBLISHED = {"ui": ("UI_BIND", "UI_PORT", "7860"), "api-gateway": ("API_BIND", "API_PORT", "8080")}


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_defaults(text: str) -> str:
    """``${VAR:-default}`` → default (what compose uses when .env leaves VAR out)."""
    return VAR.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else m.group(0), text)


def filled_env() -> dict[str, str]:
    """.env.example with every placeholder replaced (what a user's .env looks like)."""
    env = {}
    for m in re.finditer(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE, re.M):
        value = m.group(2)
        env[m.group(1)] = value.replace("change-me", "filled") + "-0123456789ab" if "change-me" in value else value
    return env


# --- services, dependencies, health ------------------------------------------------------------------------------


def test_all_services_present() -> None:
    assert set(SERVICES) >= {
        "postgres",
        "minio",
        "minio-init",
        "mlflow",
        "prefect-server",
        "prefect-worker",
        "bootstrap",
        "api",
        "ui",
        "api-gateway",
    }


@pytest.mark.parametrize("name", sorted(set(SERVICES) - ONE_SHOT))
def test_long_running_services_have_healthchecks(name: str) -> None:
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
    assert check.get("retries", 0) >= 3
    assert SERVICES[name].get("restart") == "unless-stopped"


@pytest.mark.parametrize("name", sorted(ONE_SHOT))
def test_one_shots_do_not_restart(name: str) -> None:
    assert SERVICES[name]["restart"] == "no"
    assert "healthcheck" not in SERVICES[name]


def test_healthchecks_are_honest() -> None:
    def check(name: str) -> str:
        return " ".join(SERVICES[name]["healthcheck"]["test"][1:])

    # over TCP: the entrypoint's temporary init server (Unix socket only) does not count as up
    assert re.search(r"pg_isready -h 127\.0\.0\.1 .*-U postgres", check("postgres"))
    assert check("minio") == "mc ready local" or "/minio/health/ready" in check("minio")
    assert "127.0.0.1:5000/health" in check("mlflow")
    assert "127.0.0.1:4200/api/health" in check("prefect-server")
    assert "--with-healthcheck" in SERVICES["prefect-worker"]["command"]
    env = SERVICES["prefect-worker"]["environment"]
    assert f"127.0.0.1:{env['PREFECT_WORKER_WEBSERVER_PORT']}/health" in check("prefect-worker")
    assert env["PREFECT_WORKER_WEBSERVER_HOST"] == "127.0.0.1"
    assert "127.0.0.1:3000/readyz" in check("api")
    assert "127.0.0.1:7860/config" in check("ui")
    assert "/nginx-health" in check("api-gateway")
    assert "location = /nginx-health" in (REPO / "deploy" / "nginx" / "api.conf").read_text()


def test_dependencies_wait_for_health_or_completion() -> None:
    allowed = {"service_healthy", "service_completed_successfully", "service_started"}
    healthchecked = {n for n, s in SERVICES.items() if "healthcheck" in s}
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            assert cond["condition"] in allowed
            if cond["condition"] == "service_healthy":
                assert dep in healthchecked, f"{name} waits for {dep} to be healthy but it has no healthcheck"
            if cond["condition"] == "service_completed_successfully":
                assert dep in ONE_SHOT, f"{name} waits for {dep} to complete, but it is not a one-shot"

    def cond(name: str, dep: str) -> str:
        return SERVICES[name]["depends_on"][dep]["condition"]

    assert cond("mlflow", "postgres") == "service_healthy"
    assert cond("mlflow", "minio-init") == "service_completed_successfully"
    assert cond("prefect-worker", "prefect-server") == "service_healthy"
    for dep in ("mlflow", "prefect-server", "prefect-worker"):
        assert cond("bootstrap", dep) == "service_healthy"
    assert cond("bootstrap", "minio-init") == "service_completed_successfully"
    assert cond("api", "bootstrap") == "service_completed_successfully"


# --- images --------------------------------------------------------------------------------------------------


def _image_ref(image: str) -> tuple[str, str]:
    ref = with_defaults(image).split("@", 1)[0]
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:  # no tag at all (a registry port is not a tag)
        return ref, ""
    return name, tag


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned_and_exist(name: str) -> None:
    svc = SERVICES[name]
    image = svc.get("image")
    assert image, f"{name}: name the image (and tag) it runs"
    repo, tag = _image_ref(image)
    assert tag and tag != "latest", f"{name}: {image} is not pinned by tag"
    assert "$" not in repo and "$" not in tag, f"{name}: {image} needs a default tag"
    # Docker Hub's minio/minio and minio/mc were removed on 2026-09-12
    assert not re.match(r"^(docker\.io/)?minio/", repo), f"{name}: {repo} no longer exists"
    if "minio" in repo:
        assert repo.startswith("quay.io/minio/") and tag.startswith("RELEASE.")
    if "build" not in svc:
        assert not repo.startswith("ukr-hw"), f"{name}: {repo} is built here; give it the build section"


def test_dockerfiles_pin_their_base_images() -> None:
    for dockerfile in (REPO / "deploy").glob("*Dockerfile"):
        text = dockerfile.read_text()
        args = dict(re.findall(r"^ARG\s+([A-Z_]+)=(\S+)", text, re.M))
        for base in re.findall(r"^FROM\s+(\S+)", text, re.M):
            base = re.sub(r"\$\{([A-Z_]+)\}", lambda m, args=args: args.get(m.group(1), m.group(0)), base)
            if base == "build":  # the earlier stage
                continue
            _, tag = _image_ref(base)
            assert tag and tag != "latest" and "$" not in tag, f"{dockerfile.name}: FROM {base} is not pinned"


def test_app_image_is_slim_and_non_root() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in text
    assert "requirements-runtime.txt" in text and "-r requirements.lock" not in text
    assert "system-packages.sh --no-browser" in text and "chromium" not in text.lower().replace("no chromium", "")
    assert not re.search(r"apt-get install[^\n]*\bgit\b", text)
    assert re.search(r"^USER app$", text, re.M)
    assert "chown -R app /app" not in text  # the code stays root's: `app` cannot change it
    assert "UKR_HW_ROOT=/var/lib/ukr-hw" in text and "UKR_HW_CODE_DIR=/app" in text
    mlflow_image = (REPO / "deploy" / "mlflow.Dockerfile").read_text()
    assert re.search(r"^USER mlflow$", mlflow_image, re.M) and "mlflow[auth]==" in mlflow_image


def test_runtime_requirements_are_the_lock_without_dev_tools() -> None:
    proc = subprocess.run(
        [sys.executable, "deploy/runtime_requirements.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    pins = {
        line.split("==")[0].lower(): line.strip()
        for line in (REPO / "deploy" / "requirements-runtime.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for dev in ("pytest", "ruff", "playwright", "schemathesis", "ipykernel", "nbclient", "jupyter-client", "torch"):
        assert dev not in pins, f"{dev} does not belong in the runtime image"
    for runtime in ("mlflow", "prefect", "bentoml", "gradio", "dvc", "lightning", "boto3"):
        assert runtime in pins
    lock = (REPO / "requirements.lock").read_text()
    for line in pins.values():
        assert re.search(rf"^{re.escape(line)}$", lock, re.M | re.I), f"{line} is not the lock's pin"


# --- closed by default -----------------------------------------------------------------------------------------


def test_only_the_sketchpad_and_the_api_gateway_are_published() -> None:
    published = {name for name, svc in SERVICES.items() if svc.get("ports")}
    assert published == set(PUBLISHED)
    assert "ports" not in SERVICES["api"] and "expose" not in SERVICES["api"]
    assert SERVICES["api-gateway"]["profiles"] == ["public-api"]  # the API on the host only by a setting
    for name, (bind, port, container) in PUBLISHED.items():
        [mapping] = SERVICES[name]["ports"]
        m = re.fullmatch(rf"\$\{{{bind}:-([0-9.]+)\}}:\$\{{{port}:-(\d+)\}}:{container}", mapping)
        assert m, f"{name}: publish as ${{{bind}:-127.0.0.1}}:${{{port}:-N}}:{container}, not {mapping}"
        assert m.group(1) == "127.0.0.1", f"{name} must bind to 127.0.0.1 unless configured"
        assert re.search(rf"^{bind}=127\.0\.0\.1$", ENV_EXAMPLE, re.M)


def test_control_planes_live_on_the_internal_network() -> None:
    backend = COMPOSE["networks"]["backend"]
    assert backend["internal"] is True
    for name in ("postgres", "minio", "mlflow", "minio-init", "bootstrap", "api"):
        assert SERVICES[name]["networks"] == ["backend"], f"{name} belongs on the internal network only"
    # the Prefect server sends the "retrain failed" notification itself: a way out, never a published port
    assert SERVICES["prefect-server"]["networks"] == ["backend", "egress"] and "ports" not in SERVICES["prefect-server"]
    assert "internal" not in COMPOSE["networks"]["egress"] and not any(
        "egress" in s["networks"] and s.get("ports") for s in SERVICES.values()
    )
    for name, svc in SERVICES.items():
        assert "backend" in svc["networks"], name
        assert "network_mode" not in svc, name
    for name, nets in {n: s["networks"] for n, s in SERVICES.items()}.items():
        if "egress" in nets:
            assert name in ("prefect-worker", "prefect-server") and "ports" not in SERVICES[name]


def test_operator_override_publishes_on_loopback_only() -> None:
    for name, svc in OPS["services"].items():
        assert name in ("mlflow", "prefect-server", "minio")
        for mapping in svc["ports"]:
            m = re.fullmatch(r"127\.0\.0\.1:\$\{([A-Z_]+):-\d+\}:\d+", mapping)
            assert m and m.group(1) in DEFINED, f"{name}: publish on 127.0.0.1:${{PORT_VAR:-N}}, not {mapping}"


def test_every_secret_is_required() -> None:
    ops = (REPO / "deploy" / "compose.ops.yml").read_text()
    for text, where in ((COMPOSE_CODE, "docker-compose.yml"), (ops, "deploy/compose.ops.yml")):
        for m in VAR.finditer(text):
            name, op, rest = m.groups()
            if SECRET.search(name) or name in ("MINIO_ROOT_USER", "MLFLOW_ADMIN_USERNAME"):
                assert op == ":?", f"{where}: {m.group(0)} must be ${{{name}:?…}}: compose refuses to start without it"
                assert name in rest, f"{where}: the message of {m.group(0)} should name {name}"
    used = {m.group(1) for m in VAR.finditer(COMPOSE_CODE) if SECRET.search(m.group(1))}
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "PREFECT_AUTH_STRING", "MLFLOW_ADMIN_PASSWORD"} <= used


def test_control_planes_require_auth() -> None:
    server = SERVICES["prefect-server"]["environment"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    for client in ("prefect-worker", "bootstrap"):
        assert SERVICES[client]["environment"]["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    start = load(REPO / "deploy" / "mlflow" / "start.py")
    assert start.command({"MLFLOW_DB_PASSWORD": "x"}, [])[:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    mlflow_env = SERVICES["mlflow"]["environment"]
    for var in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert ":?" in mlflow_env[var]
    users = {
        "prefect-worker": "MLFLOW_WORKER",
        "bootstrap": "MLFLOW_WORKER",
        "api": "MLFLOW_API",
    }
    for name, role in users.items():
        env = SERVICES[name]["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"].startswith(f"${{{role}_USERNAME:-")
        assert env["MLFLOW_TRACKING_PASSWORD"].startswith(f"${{{role}_PASSWORD:?")
    assert "MLFLOW_TRACKING_PASSWORD" not in SERVICES["ui"]["environment"]  # the UI never talks to MLflow


def test_every_variable_is_defined_in_env_example() -> None:
    texts = COMPOSE_CODE + (REPO / "deploy" / "compose.ops.yml").read_text()
    used = {m.group(1) for m in VAR.finditer(texts)}
    assert used, "compose file uses no variables?"
    missing = used - DEFINED
    assert not missing, f"define {sorted(missing)} in .env.example (deploy/env_example.py)"


def test_env_example_holds_no_real_secrets() -> None:
    for line in ENV_EXAMPLE.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#") and SECRET.search(key) and not key.endswith("_USERNAME"):
            assert value.startswith("change-me"), f"{key} must be a placeholder, not {value!r}"


def test_env_example_lists_every_setting() -> None:
    from ukr_hw.settings import Settings

    missing = [n for n in Settings.model_fields if f"UKR_HW_{n.upper()}=" not in ENV_EXAMPLE]
    assert not missing, f"add {missing} to .env.example (`.venv/bin/python deploy/env_example.py`)"
    proc = subprocess.run([sys.executable, "deploy/env_example.py", "--check"], cwd=REPO, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


# --- one S3 key per role, least privilege -----------------------------------------------------------------------


def _grants(policy: dict) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(allowed, denied) as {(action, resource)}; no wildcards allowed in either."""
    allowed, denied = set(), set()
    assert policy["Version"] == "2012-10-17"
    for st in policy["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        assert "Condition" not in st or st["Effect"] == "Deny"
        for a in actions:
            assert "*" not in a, f"wildcard action {a}"
            for r in resources:
                assert r.startswith("arn:aws:s3:::") and not r.startswith("arn:aws:s3:::*"), r
                (allowed if st["Effect"] == "Allow" else denied).add((a, r))
    return allowed, denied


def test_each_role_has_its_policy() -> None:
    assert set(POLICIES) == {"ui", "worker", "mlflow"}  # the API has none: it only talks to MLflow
    init = (REPO / "deploy" / "minio" / "init.sh").read_text()
    for bucket in ("mlflow", "feedback", "dvc"):
        assert bucket in init
    for cmd in ("mc admin user add", "mc admin policy create", "mc admin policy attach"):
        assert cmd in init
    assert "readwrite" not in init  # MinIO's canned all-buckets policy


def test_ui_key_can_only_put_feedback() -> None:
    allowed, denied = _grants(POLICIES["ui"])
    assert allowed == {("s3:PutObject", "arn:aws:s3:::feedback/*"), ("s3:HeadBucket", "arn:aws:s3:::feedback")}
    assert ("s3:PutObject", "arn:aws:s3:::feedback/quarantine/*") in denied


def test_worker_key_reads_feedback_and_owns_the_dvc_remote() -> None:
    allowed, _ = _grants(POLICIES["worker"])
    buckets = {r.split(":::")[1].split("/")[0] for _, r in allowed}
    assert buckets == {"feedback", "dvc"}  # MLflow artifacts go through the MLflow server
    assert {("s3:ListBucket", "arn:aws:s3:::feedback"), ("s3:GetObject", "arn:aws:s3:::feedback/*")} <= allowed
    writes = {r for a, r in allowed if a == "s3:PutObject"}
    assert writes == {"arn:aws:s3:::feedback/quarantine/*", "arn:aws:s3:::dvc/*"}
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert (action, "arn:aws:s3:::dvc/*") in allowed
    assert ("s3:ListBucket", "arn:aws:s3:::dvc") in allowed


def test_mlflow_key_has_its_artifact_bucket_only() -> None:
    allowed, _ = _grants(POLICIES["mlflow"])
    assert {r.split(":::")[1].split("/")[0] for _, r in allowed} == {"mlflow"}
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert (action, "arn:aws:s3:::mlflow/*") in allowed


def test_services_hold_only_their_role_key() -> None:
    def s3_vars(name: str) -> set[str]:
        env = SERVICES[name].get("environment") or {}
        return {m.group(1) for v in env.values() for m in VAR.finditer(str(v)) if m.group(1).startswith("S3_")}

    assert s3_vars("api") == set() and s3_vars("bootstrap") == set() and s3_vars("prefect-server") == set()
    assert s3_vars("ui") == {"S3_UI_ACCESS_KEY_ID", "S3_UI_SECRET_KEY"}
    assert s3_vars("prefect-worker") == {"S3_WORKER_ACCESS_KEY_ID", "S3_WORKER_SECRET_KEY"}
    assert s3_vars("mlflow") == {"S3_MLFLOW_ACCESS_KEY_ID", "S3_MLFLOW_SECRET_KEY"}
    others = {n: s.get("environment") for n, s in SERVICES.items() if n not in ("minio", "minio-init")}
    assert "MINIO_ROOT_PASSWORD" not in json.dumps(others)


@pytest.fixture()
def fake_mc(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in `mc` on PATH that logs its arguments (MinIO's client is not installed here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "mc.log"
    mc = bin_dir / "mc"
    mc.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    mc.chmod(0o755)
    return bin_dir, log


def _run_init(bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in filled_env().items() if k.startswith(("MINIO_", "S3_"))}
    return subprocess.run(
        ["sh", str(REPO / "deploy" / "minio" / "init.sh")],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_minio_init_gives_each_role_its_policy(fake_mc) -> None:
    bin_dir, log = fake_mc
    proc = _run_init(bin_dir)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    env = filled_env()
    for role in ("ui", "worker", "mlflow"):
        key = env[f"S3_{role.upper()}_ACCESS_KEY_ID"]
        secret = env[f"S3_{role.upper()}_SECRET_KEY"]
        assert f"admin policy create local ukr-hw-{role} {REPO}/deploy/minio/policies/{role}.json" in calls
        assert f"admin user add local {key} {secret}" in calls
        assert f"admin policy attach local ukr-hw-{role} --user {key}" in calls
    for bucket in ("mlflow", "feedback", "dvc"):
        assert f"mb --ignore-existing local/{bucket}" in calls


def test_minio_init_refuses_placeholders(fake_mc) -> None:
    bin_dir, log = fake_mc
    proc = _run_init(bin_dir, S3_UI_SECRET_KEY="change-me-s3-ui")
    assert proc.returncode == 2 and "S3_UI_SECRET_KEY" in proc.stderr and "placeholder" in proc.stderr
    assert not log.exists()  # nothing done
    proc = _run_init(bin_dir, S3_WORKER_SECRET_KEY="")
    assert proc.returncode == 2 and "S3_WORKER_SECRET_KEY is not set" in proc.stderr


def test_postgres_init_refuses_placeholders(tmp_path: Path) -> None:
    env = {k: v for k, v in filled_env().items() if k.endswith("_PASSWORD")}
    env.update(PATH="/usr/bin:/bin", POSTGRES_USER="postgres", LINEAGE_DB_PASSWORD="change-me-lineage-db")
    proc = subprocess.run(
        ["bash", str(REPO / "deploy" / "postgres" / "init-databases.sh")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "LINEAGE_DB_PASSWORD" in proc.stderr


# --- MLflow's start script -------------------------------------------------------------------------------------


def test_mlflow_start_refuses_missing_and_placeholder_secrets() -> None:
    env = {"PATH": os.environ["PATH"], "MLFLOW_DB_PASSWORD": "change-me-mlflow-db"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "mlflow" / "start.py"), "--port=5000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "MLFLOW_DB_PASSWORD is still the placeholder" in proc.stderr
    assert "MLFLOW_AUTH_ADMIN_PASSWORD is not set" in proc.stderr


def test_mlflow_auth_config_keeps_any_password(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    start = load(REPO / "deploy" / "mlflow" / "start.py")
    password = "p@ss%w:rd/#1 ok"
    env = {"MLFLOW_DB_PASSWORD": password}
    ini = tmp_path / "auth" / "basic_auth.ini"
    start.write_private(ini, start.auth_config(env))
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    parsed = configparser.ConfigParser()
    parsed.read(ini)
    url = make_url(parsed["mlflow"]["database_uri"])
    assert (url.password, url.database, url.host, url.username) == (password, "mlflow_auth", "postgres", "mlflow")
    assert parsed["mlflow"]["default_permission"] == "READ"
    backend = [a for a in start.command(env, ["--port=5000"]) if a.startswith("--backend-store-uri=")]
    assert make_url(backend[0].split("=", 1)[1]).password == password


# --- bootstrap ---------------------------------------------------------------------------------------------------


def test_bootstrap_service_registers_the_deployments() -> None:
    svc = SERVICES["bootstrap"]
    assert svc["command"][:2] == ["python", "deploy/bootstrap.py"]
    steps = sorted((REPO / "ukr_hw" / "ops" / "bootstrap").glob("*.py"))  # deploy/bootstrap.py is their command line
    text = "".join(p.read_text() for p in steps)
    assert '"deploy", "--all"' in text  # `prefect deploy --all` from prefect.yaml
    assert '"pipeline"' in text  # natively: the app's own CLI (`ukr-hw pipeline`) trains the first champion
    assert "COPY deploy/bootstrap.py deploy/" in (REPO / "deploy" / "Dockerfile").read_text()
    assert svc["environment"]["UKR_HW_BOOTSTRAP_RETRAIN_POOL"] == "${RETRAIN_POOL:-ukr-hw-process}"


def test_bootstrap_refuses_placeholders() -> None:
    env = {
        "PATH": os.environ["PATH"],
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
        "UKR_HW_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_API_PASSWORD": "change-me-mlflow-api",
    }
    cmd = [sys.executable, str(REPO / "deploy" / "bootstrap.py"), "--check-only"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "MLFLOW_API_PASSWORD is still the placeholder" in proc.stderr
    env["MLFLOW_API_PASSWORD"] = "a-real-password-123"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    del env["PREFECT_API_URL"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "PREFECT_API_URL is not set" in proc.stderr


def test_bootstrap_reads_prefect_yaml() -> None:
    boot = load(REPO / "deploy" / "bootstrap.py")
    names = boot.deployment_names(PREFECT)
    assert {"pipeline/default", "retrain/weekly", "retrain/weekly-docker"} <= set(names)
    assert boot.pool_types(PREFECT) == {
        "ukr-hw-process": "process",
        "ukr-hw-docker": "docker",
        "ukr-hw-kubernetes": "kubernetes",
    }
    retrain = boot.retrain_deployments(PREFECT)
    assert retrain["retrain/weekly"] == "ukr-hw-process" and retrain["retrain/weekly-docker"] == "ukr-hw-docker"
    assert boot.FIRST_CHAMPION_DEPLOYMENT in names


def test_bootstrap_keeps_the_mlflow_users() -> None:
    import httpx

    boot = load(REPO / "deploy" / "bootstrap.py")
    users = {"ukr-hw-worker": "old-password-123"}  # the server's users; the API's does not exist yet
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        auth = request.headers.get("authorization", "")
        seen.append((request.method, path))
        admin = auth == _basic("admin", "admin-password-1")
        if path.endswith("/users/current"):
            ok = any(auth == _basic(u, p) for u, p in users.items())
            return httpx.Response(200 if ok else 401)
        if not admin:
            return httpx.Response(401)
        body = json.loads(request.content or b"{}")
        if path.endswith("/users/get"):
            return httpx.Response(200 if request.url.params["username"] in users else 404)
        if path.endswith("/users/create") or path.endswith("/users/update-password"):
            users[body["username"]] = body["password"]
            return httpx.Response(200, json={})
        return httpx.Response(400)

    env = {
        "MLFLOW_ADMIN_USERNAME": "admin",
        "MLFLOW_ADMIN_PASSWORD": "admin-password-1",
        "MLFLOW_WORKER_PASSWORD": "new-password-456",
        "MLFLOW_API_PASSWORD": "api-password-789",
    }
    client = httpx.Client(transport=httpx.MockTransport(handler))
    done = boot.ensure_mlflow_users("http://mlflow:5000", env, http=client)
    assert done == ["ukr-hw-worker: password updated", "ukr-hw-api: created"]
    assert users == {"ukr-hw-worker": "new-password-456", "ukr-hw-api": "api-password-789"}
    assert ("PATCH", "/api/2.0/mlflow/users/update-password") in seen
    assert boot.ensure_mlflow_users("http://mlflow:5000", env, http=client) == [
        "ukr-hw-worker: exists",
        "ukr-hw-api: exists",
    ]
    with pytest.raises(boot.BootstrapError, match="refused the admin credentials"):
        boot.ensure_mlflow_users("http://mlflow:5000", {**env, "MLFLOW_ADMIN_PASSWORD": "wrong-password"}, http=client)
    assert boot.ensure_mlflow_users("http://mlflow:5000", {}, http=client) == []  # no basic-auth app: nothing to do


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- prefect.yaml --------------------------------------------------------------------------------------------


def test_prefect_yaml_deployments() -> None:
    deps = {d["entrypoint"].split(":")[1] + "/" + d["name"]: d for d in PREFECT["deployments"]}
    assert set(deps) >= {"prepare/default", "train/default", "pipeline/default", "tune/default", "retrain/weekly"}
    weekly = deps["retrain/weekly"]
    assert weekly["work_pool"]["name"] == "ukr-hw-process"
    assert weekly["schedules"][0]["cron"] == "0 3 * * 1"
    assert weekly["schedules"][0]["timezone"] == "Europe/Kyiv"
    assert weekly["schedules"][0]["active"] is True
    for d in PREFECT["deployments"]:
        path, func = d["entrypoint"].split(":")
        if (REPO / path).exists():  # flows land as their helpers write them
            assert re.search(rf"^def {func}\(", (REPO / path).read_text(), re.M), d["entrypoint"]
        if not d["entrypoint"].endswith(":retrain"):
            assert d["work_pool"]["name"] == "ukr-hw-process"
    step = PREFECT["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == "{{ $UKR_HW_CODE_DIR }}"


def test_weekly_retrain_is_offered_on_a_docker_pool() -> None:
    deps = {d["entrypoint"].split(":")[1] + "/" + d["name"]: d for d in PREFECT["deployments"]}
    docker = deps["retrain/weekly-docker"]
    assert docker["work_pool"]["name"] == "ukr-hw-docker"
    jv = docker["work_pool"]["job_variables"]
    assert jv["image"] == "{{ $UKR_HW_IMAGE }}"
    assert set(jv["networks"]) == {COMPOSE["networks"]["backend"]["name"], COMPOSE["networks"]["egress"]["name"]}
    assert jv["volumes"] == [f"{COMPOSE['volumes']['worker-data']['name']}:/var/lib/ukr-hw"]
    assert docker["schedules"][0]["cron"] == deps["retrain/weekly"]["schedules"][0]["cron"]
    # by hand (`prefect deploy --all`) only the process pool's schedule is active: a week never retrains twice
    active = [n for n, d in deps.items() if any(s.get("active", True) for s in d.get("schedules") or [])]
    assert active == ["retrain/weekly"]
    kube = deps.get("retrain/weekly-kubernetes")
    if kube:
        assert kube["work_pool"]["name"] == "ukr-hw-kubernetes" and kube["work_pool"]["job_variables"]["image"]


# --- files, commands, scripts ----------------------------------------------------------------------------------


def test_builds_mounts_and_scripts_exist() -> None:
    for name, svc in SERVICES.items():
        build = svc.get("build")
        if build:
            context = REPO / build["context"]
            assert context.is_dir(), name
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            text = dockerfile.read_text()
            assert text.lstrip().startswith(("#", "FROM", "ARG")) and "FROM " in text
            ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
            kept = ignore.read_text().splitlines() if ignore.exists() else None
            for src in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+?)\s+\S+$", text, re.M):
                for part in src.split():
                    assert (context / part).exists(), f"{dockerfile.name}: COPY source {part} missing"
                    if kept is not None:
                        top = part.split("/")[0]
                        assert f"!{part}" in kept or f"!{part}/" in kept or f"!{top}/" in kept, (
                            f"{ignore.name} ignores {part}, which {dockerfile.name} copies"
                        )
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), f"{name}: mounted {src} missing"
                if src.endswith(".sh"):
                    assert (REPO / src).stat().st_mode & 0o111, f"{src} must be executable"
            else:
                assert src in COMPOSE["volumes"], f"{name}: volume {src} is not declared"
    assert (REPO / "deploy" / "minio" / "init.sh").stat().st_mode & 0o111


def test_commands_exist() -> None:
    """Every command the services run is a real CLI of this project (or the images' own tools)."""
    from ukr_hw.cli import build_parser

    parser = build_parser()
    for name in ("api", "ui"):
        cmd = SERVICES[name]["command"]
        assert cmd[0] == "ukr-hw"
        parser.parse_args(cmd[1:])  # exits (SystemExit) on an unknown subcommand/option
    worker = SERVICES["prefect-worker"]["command"]
    assert worker[:3] == ["prefect", "worker", "start"] and "ukr-hw-process" in worker
    boot = load(REPO / "deploy" / "bootstrap.py")
    boot.build_parser().parse_args(SERVICES["bootstrap"]["command"][2:])
    mlflow_cmd = " ".join(SERVICES["mlflow"]["command"])
    assert "--artifacts-destination=s3://mlflow/" in mlflow_cmd and "--serve-artifacts" in mlflow_cmd
    assert 'ENTRYPOINT ["python", "/opt/ukr-hw/start.py"]' in (REPO / "deploy" / "mlflow.Dockerfile").read_text()
    assert "postgresql+asyncpg://" in SERVICES["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    pg = (REPO / "deploy" / "postgres" / "init-databases.sh").read_text()
    for db in ("mlflow", "prefect", "optuna", "lineage"):
        assert f"create {db} " in pg
    assert "create_owned mlflow_auth mlflow" in pg


def test_api_scales_out() -> None:
    api = SERVICES["api"]
    assert api["deploy"]["replicas"] == "${API_REPLICAS:-1}"
    assert "container_name" not in api and "ports" not in api
    assert not [v for v in api.get("volumes", []) if not v.startswith("/")]  # no shared state between replicas
    assert "UKR_HW_RELOAD_INTERVAL_S" in api["environment"]  # each replica follows the alias by itself
    assert "resolver 127.0.0.11" in (REPO / "deploy" / "nginx" / "api.conf").read_text()


def test_shell_scripts_parse() -> None:
    for script in (REPO / "deploy").rglob("*.sh"):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
    proc = subprocess.run(["sh", "-n", str(REPO / "deploy" / "minio" / "init.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr  # the mc image runs it with /bin/sh


# --- docker compose config, where compose is installed --------------------------------------------------------


def _compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _compose_config(tmp_path: Path, env: dict[str, str], *files: str) -> subprocess.CompletedProcess[str]:
    compose = _compose()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    args = [*compose, "--env-file", str(env_file), "--project-directory", str(REPO)]
    for f in files or ("docker-compose.yml",):
        args += ["-f", str(REPO / f)]
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # no secrets from the test's own environment
    return subprocess.run([*args, "config"], capture_output=True, text=True, cwd=tmp_path, env=clean, timeout=120)


def test_compose_config_validates(tmp_path: Path) -> None:
    proc = _compose_config(tmp_path, filled_env())
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    published = {n: s["ports"] for n, s in config["services"].items() if s.get("ports")}
    assert set(published) == set(PUBLISHED)
    for ports in published.values():
        for p in ports:
            host_ip = p["host_ip"] if isinstance(p, dict) else str(p).split(":")[0]
            assert host_ip == "127.0.0.1", p
    ops = _compose_config(tmp_path, filled_env(), "docker-compose.yml", "deploy/compose.ops.yml")
    assert ops.returncode == 0, ops.stderr


def test_compose_refuses_a_missing_secret(tmp_path: Path) -> None:
    env = filled_env()
    del env["MLFLOW_API_PASSWORD"]
    proc = _compose_config(tmp_path, env)
    assert proc.returncode != 0
    assert "set MLFLOW_API_PASSWORD in .env" in proc.stderr
