"""The native stack's building blocks against real servers: PostgreSQL, SeaweedFS, mlflow server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import pytest

from ukr_hw import stack


def test_pg_database_is_fresh_and_dropped(pg_admin_url: str, pg_database: str) -> None:
    import psycopg

    name = pg_database.rsplit("/", 1)[1]
    assert pg_database.startswith("postgresql+psycopg://postgres@127.0.0.1:5432/")
    with psycopg.connect(pg_database.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    # dropping works even while a session is still connected
    held = psycopg.connect(pg_database.replace("+psycopg", ""), autocommit=True)
    try:
        stack.drop_database(name, pg_admin_url)
    finally:
        held.close()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None


def test_ensure_database_is_idempotent(pg_admin_url: str) -> None:
    name = f"ukrhw_test_{uuid.uuid4().hex[:8]}"
    try:
        assert stack.ensure_database(name, pg_admin_url) is True
        assert stack.ensure_database(name, pg_admin_url) is False
    finally:
        stack.drop_database(name, pg_admin_url)


def test_bad_database_name_is_refused(pg_admin_url: str) -> None:
    with pytest.raises(stack.StackError, match="invalid database name"):
        stack.ensure_database('x"; DROP DATABASE postgres; --', pg_admin_url)


def test_postgres_missing_gives_clear_message() -> None:
    port = stack.free_port()
    with pytest.raises(stack.StackError, match=r"PostgreSQL not reachable.*UKR_HW_POSTGRES_URL"):
        stack.ensure_database("whatever", f"postgresql://postgres@127.0.0.1:{port}/postgres")


def test_s3_server_roundtrip_auth_and_outage(s3_server: stack.S3Server, s3_bucket: str) -> None:
    import boto3
    from botocore.exceptions import ClientError, EndpointConnectionError

    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="2026/01/01/a.json", Body=b'{"x": 1}')
    assert client.get_object(Bucket=s3_bucket, Key="2026/01/01/a.json")["Body"].read() == b'{"x": 1}'
    # ensuring a bucket that exists (as when the server made it in the background) keeps it and what it holds
    assert s3_server.ensure_bucket(s3_bucket) == s3_bucket
    assert client.get_object(Bucket=s3_bucket, Key="2026/01/01/a.json")["Body"].read() == b'{"x": 1}'
    fresh = f"{s3_bucket}-new"
    assert s3_server.ensure_bucket(fresh) == fresh and s3_server.ensure_bucket(fresh) == fresh
    client.head_bucket(Bucket=fresh)

    intruder = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id="nobody",
        aws_secret_access_key="wrong",
        region_name=s3_server.region,
    )
    with pytest.raises(ClientError):
        intruder.list_buckets()

    s3_server.stop()
    with pytest.raises(EndpointConnectionError):
        s3_server.client().list_buckets()
    s3_server.start()
    # same data dir and port: the object survived the outage
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="2026/01/01/a.json")["Body"].read() == b'{"x": 1}'


def test_s3_port_taken_gives_clear_message(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = stack.S3Server(data_dir=tmp_path / "d", log_path=tmp_path / "w.log", s3_port=port)
        with pytest.raises(stack.StackError, match=rf"port {port} .* already in use.*UKR_HW_S3_PORT"):
            server.start()


def test_mlflow_server_logs_artifacts_to_s3(mlflow_server: str, s3_server: stack.S3Server, tmp_path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.create_experiment(f"stack-{uuid.uuid4().hex[:6]}")
    run = client.create_run(exp)
    art = tmp_path / "hello.txt"
    art.write_text("hello")
    client.log_artifact(run.info.run_id, str(art))
    client.log_metric(run.info.run_id, "m", 0.5)
    client.set_terminated(run.info.run_id)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["hello.txt"]
    # proxied: the artifact landed in the S3 bucket behind the server
    s3 = s3_server.client()
    keys = [
        o["Key"]
        for b in s3.list_buckets()["Buckets"]
        if b["Name"].startswith("mlflow-")
        for o in s3.list_objects_v2(Bucket=b["Name"]).get("Contents", [])
    ]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/hello.txt") for k in keys), keys


# --- `ukr-hw stack` ------------------------------------------------------------------------------------------------


def _cli(env: dict[str, str], *args: str, timeout: float = 240):
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "ukr-hw")
    return subprocess.run(
        [exe, "stack", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )


def test_kill_group_reaps_its_own_child_without_waiting_out_the_timeout() -> None:
    """A service this process started (tests, ``ukr-hw up``) exits on SIGTERM but stays a zombie until reaped;
    stopping it must not wait the full timeout (it made the end-to-end test's teardown 90 s)."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    started = time.monotonic()
    stack.kill_group(proc.pid, timeout=120)
    assert time.monotonic() - started < 30  # the bug waits all 120 s
    assert proc.poll() is not None and not stack._group_alive(proc.pid)


def test_an_exited_child_not_yet_reaped_is_not_running_and_keeps_its_exit_code() -> None:
    """``Stack.status`` in the process that started a service: a service that died is down, not "running" (its
    zombie still answers ``kill(pid, 0)``), and its ``Popen`` can still report how it exited."""
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    start = stack._process_start_time(proc.pid)
    deadline = time.monotonic() + 30
    while not stack.is_zombie(proc.pid):  # exited, not reaped: nobody waited yet
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not stack._same_process(proc.pid, start)
    assert proc.wait(timeout=10) == 3


def test_expand_adds_what_services_need() -> None:
    assert stack.expand(["mlflow"]) == ["s3", "mlflow"]
    assert stack.expand(["ui"]) == ["s3", "mlflow", "api", "ui"]
    assert stack.expand([]) == list(stack.SERVICES)
    with pytest.raises(stack.StackError, match=r"unknown service.*choose from"):
        stack.expand(["redis"])


def test_stack_cli_up_status_down(tmp_path) -> None:
    import json

    import boto3

    env = {"UKR_HW_STACK_DIR": str(tmp_path / "stack"), "UKR_HW_S3_PORT": str(stack.free_port())}
    up = _cli(env, "up", "s3")
    assert up.returncode == 0, up.stderr
    assert "s3       up" in up.stdout and "UKR_HW_S3_ENDPOINT_URL=http://127.0.0.1:" in up.stdout
    state = json.loads((tmp_path / "stack" / "state.json").read_text())
    pid = state["s3"]["pid"]
    env_file = tmp_path / "stack" / "env"
    assert env_file.stat().st_mode & 0o077 == 0, "the env file holds secrets: owner-only"
    assert f"UKR_HW_S3_ENDPOINT_URL=http://127.0.0.1:{env['UKR_HW_S3_PORT']}" in env_file.read_text()
    try:
        creds = json.loads((tmp_path / "stack" / "credentials.json").read_text())
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{env['UKR_HW_S3_PORT']}",
            aws_access_key_id=creds["access_key"],
            aws_secret_access_key=creds["secret_key"],
            region_name="us-east-1",
        )
        assert {b["Name"] for b in s3.list_buckets()["Buckets"]} >= {"mlflow", "feedback", "dvc"}

        again = _cli(env, "up", "s3")
        assert again.returncode == 0 and "already running" in again.stdout

        status = _cli(env, "status", "s3")
        assert status.returncode == 0 and status.stdout.split()[:2] == ["s3", "up"]
        everything = _cli(env, "status")
        assert everything.returncode == 3  # the other services are down
        assert "mlflow   down" in everything.stdout
    finally:
        down = _cli(env, "down")
    assert down.returncode == 0 and f"s3       stopped (pid {pid})" in down.stdout
    assert not stack._same_process(pid, None)
    status = _cli(env, "status", "s3")
    assert status.returncode == 3 and status.stdout.split()[:2] == ["s3", "down"]
    assert "nothing to stop" in _cli(env, "down").stdout


def test_stack_cli_port_taken(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {"UKR_HW_STACK_DIR": str(tmp_path / "stack"), "UKR_HW_S3_PORT": str(port)}
        up = _cli(env, "up", "s3")
    assert up.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in up.stderr and "UKR_HW_S3_PORT" in up.stderr
    assert "ukr-hw stack down" in up.stderr


def test_stack_cli_postgres_missing(tmp_path) -> None:
    env = {
        "UKR_HW_STACK_DIR": str(tmp_path / "stack"),
        "UKR_HW_PREFECT_PORT": str(stack.free_port()),
        "UKR_HW_POSTGRES_URL": f"postgresql://postgres@127.0.0.1:{stack.free_port()}/postgres",
    }
    up = _cli(env, "up", "prefect")
    assert up.returncode == 1 and "PostgreSQL not reachable" in up.stderr


# --- `ukr-hw stack up` bootstraps the stack (ukr_hw/ops/bootstrap/, the same steps as compose's one-shot service) ---


def test_stack_cli_refuses_placeholders(tmp_path) -> None:
    """.env.example copied for compose must not hand the native stack its placeholder secrets."""
    env = {
        "UKR_HW_STACK_DIR": str(tmp_path / "stack"),
        "UKR_HW_S3_PORT": str(stack.free_port()),
        "UKR_HW_ADMIN_TOKEN": "change-me-admin-token",
        "MLFLOW_TRACKING_PASSWORD": "change-me-too",
    }
    up = _cli(env, "up", "s3")
    assert up.returncode == 1
    assert "UKR_HW_ADMIN_TOKEN is still the placeholder 'change-me-admin-token'" in up.stderr
    assert "MLFLOW_TRACKING_PASSWORD is still the placeholder" in up.stderr
    assert not (tmp_path / "stack" / "state.json").exists()  # nothing started


def test_first_champion_decision() -> None:
    from ukr_hw.ops import bootstrap

    assert bootstrap.first_champion_action("3", "worker") == "keep"  # a champion: never trains again
    assert bootstrap.first_champion_action("3", "local") == "keep"
    assert bootstrap.first_champion_action(None, "worker") == "train-worker"  # none: `ukr-hw stack up` trains
    assert bootstrap.first_champion_action(None, "local") == "train-local"
    assert bootstrap.first_champion_action(None, "none") == "report"
    assert bootstrap.first_champion_action(None, "worker", worker=False) == "report"  # no worker to run it
    with pytest.raises(bootstrap.BootstrapError, match="unknown training mode"):
        bootstrap.first_champion_action(None, "always")


class _Webhook:
    """A webhook receiver on loopback: what a Slack-style notification block posts to."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.bodies: list[bytes] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.bodies.append(self.rfile.read(int(self.headers.get("content-length", 0))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while not self.bodies and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.bodies


def test_stack_up_bootstraps_deployments_schedule_limit_and_failure_alert(tmp_path, pg_admin_url: str) -> None:
    """`ukr-hw stack up` registers prefect.yaml's deployments on its Prefect server with the weekly retrain
    scheduled on the process pool only, the data concurrency limit and the failure automation, and with no
    champion says so (training mode none here: the decision to train is tested above, a real first training is
    the pipeline's own test)."""
    import json

    import yaml
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Failed

    from ukr_hw.ops import bootstrap

    hook = _Webhook()
    tag = uuid.uuid4().hex[:8]
    ports = stack.free_ports(3)
    env = {
        "UKR_HW_STACK_DIR": str(tmp_path / "stack"),
        "UKR_HW_S3_PORT": str(ports[0]),
        "UKR_HW_MLFLOW_PORT": str(ports[1]),
        "UKR_HW_PREFECT_PORT": str(ports[2]),
        "UKR_HW_MLFLOW_DATABASE": f"ukrhw_test_boot_mlflow_{tag}",
        "UKR_HW_PREFECT_DATABASE": f"ukrhw_test_boot_prefect_{tag}",
        "UKR_HW_BOOTSTRAP_TRAIN": "none",
        "UKR_HW_ALERT_WEBHOOK_URL": hook.url,
    }
    api_url = f"http://127.0.0.1:{ports[2]}/api"
    spec = yaml.safe_load((stack.REPO / "prefect.yaml").read_text())
    try:
        up = _cli(env, "up", "prefect", "mlflow", timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        out = up.stdout
        assert out.index("prefect  up") < out.index("bootstrap: deployed 7 deployments")
        assert "weekly retrain scheduled on retrain/weekly (pool ukr-hw-process)" in out
        assert "no champion yet, and training mode none" in out and "bootstrap: done" in out

        with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            for name in bootstrap.deployment_names(spec):
                assert client.read_deployment_by_name(name).entrypoint.startswith("flows/"), name
            active = {
                name: [s.active for s in client.read_deployment_schedules(client.read_deployment_by_name(name).id)]
                for name in bootstrap.retrain_deployments(spec)
            }
            assert active == {
                "retrain/weekly": [True],
                "retrain/weekly-docker": [False],
                "retrain/weekly-kubernetes": [False],
            }
            weekly = client.read_deployment_by_name("retrain/weekly")
            assert weekly.work_pool_name == "ukr-hw-process"
            limit = client.read_global_concurrency_limit_by_name(bootstrap.DATA_LIMIT)
            assert (limit.limit, limit.active) == (1, True)
            automations = client.read_automations_by_name(bootstrap.FAILURE_AUTOMATION)
            assert len(automations) == 1 and automations[0].enabled

            # the weekly run fails: the automation tells the webhook, naming the run and linking its logs
            run = client.create_flow_run_from_deployment(weekly.id)
            client.set_flow_run_state(run.id, Failed(message="retrain broke"), force=True)
            bodies = hook.wait(90)
        assert bodies, "no notification for the failed weekly run"
        text = json.loads(bodies[0])["text"]
        assert f"the retrain run {run.name} ended Failed" in text and "retrain broke" in text
        assert f"/runs/flow-run/{run.id}" in text and "(deployment weekly)" in text
    finally:
        down = _cli(env, "down")
        for db in (env["UKR_HW_MLFLOW_DATABASE"], env["UKR_HW_PREFECT_DATABASE"]):
            stack.drop_database(db, pg_admin_url)
    assert down.returncode == 0
