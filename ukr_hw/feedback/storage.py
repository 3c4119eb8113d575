"""Where the store's bytes live: a flat ``key → bytes`` space in a local folder or an S3 bucket/prefix.

:class:`FeedbackStore` only ever puts, gets, checks, deletes and lists keys, so the layout and every rule about
samples live in the store and a backend stays small. :class:`S3Backend` turns "S3 cannot be reached" (refused,
timed out, HTTP 5xx) into :class:`StoreUnavailable`, which the store answers by spooling to a
:class:`LocalBackend`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ukr_hw.feedback.record import StoreUnavailable
from ukr_hw.ops.s3 import bucket_already_exists, s3_client
from ukr_hw.settings import Settings

#: Error codes S3 servers answer for a missing key (``head_object`` has no body, so only the status).
_MISSING = ("NoSuchKey", "404", "NotFound")


class Backend(Protocol):
    description: str

    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...  # raises KeyError when missing
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> Iterator[str]: ...  # keys under prefix ("" = all)


class LocalBackend:
    """A folder; writes go through a temp file in the same folder and ``os.replace`` (atomic)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, data: bytes, content_type: str = "") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise KeyError(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.startswith(".tmp-"):
                    yield Path(dirpath, name).relative_to(self.root).as_posix()


class S3Backend:
    """An S3 bucket/prefix (MinIO, SeaweedFS, AWS) through boto3, with short timeouts and few retries (botocore's
    own "standard" retries: one retry after the first try), so a save while S3 is down spools within seconds."""

    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.description = f"s3://{bucket}/{self.prefix}".rstrip("/")
        secret = settings.s3_secret_access_key
        self.client = s3_client(
            settings.s3_endpoint_url or None,
            settings.s3_access_key_id or None,
            secret.get_secret_value() if secret else None,
            settings.s3_region,
            retries=1,
            retry_mode="standard",
            connect_timeout=2,
            read_timeout=10,
            addressing_style="path",
        )
        self._bucket_ok = False

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Turns "S3 is not reachable" (network, timeout, HTTP 5xx) into :class:`StoreUnavailable`."""
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            yield
        except (BotoConnectionError, HTTPClientError) as exc:
            raise StoreUnavailable(f"S3 at {self.client.meta.endpoint_url} is not reachable: {exc}") from exc
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500:
                raise StoreUnavailable(f"S3 at {self.client.meta.endpoint_url} answered {status}: {exc}") from exc
            raise
        except BotoCoreError as exc:  # e.g. a timeout reading the body
            if "timeout" in type(exc).__name__.lower() or "connect" in str(exc).lower():
                raise StoreUnavailable(f"S3 at {self.client.meta.endpoint_url} is not reachable: {exc}") from exc
            raise

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        with self._unavailable():
            return fn(**kwargs)

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        if self._bucket_ok:
            return
        try:
            self._call(self.client.head_bucket, Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
            try:
                self._call(self.client.create_bucket, Bucket=self.bucket)
            except ClientError as exc2:
                if not bucket_already_exists(exc2):
                    raise
        self._bucket_ok = True

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.ensure_bucket()
        self._call(self.client.put_object, Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            obj = self._call(self.client.get_object, Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise KeyError(key) from exc
            raise
        return obj["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call(self.client.head_object, Bucket=self.bucket, Key=self._full(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self._full(key))

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``, page by page through boto3's ``list_objects_v2`` paginator."""
        self.ensure_bucket()
        full = self._full(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        pages = iter(self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full))
        while True:
            with self._unavailable():  # each page is a request: fetch it inside, hand its keys out outside
                page = next(pages, None)
            if page is None:
                return
            for obj in page.get("Contents", []):
                yield obj["Key"][cut:]


def backend_for(uri: str, settings: Settings) -> Backend:
    """``s3://bucket[/prefix]`` → :class:`S3Backend`; anything else is a local folder (relative to root)."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"feedback_uri {uri!r} names no bucket; use s3://bucket[/prefix]")
        return S3Backend(bucket, prefix, settings)
    return LocalBackend(settings.path(uri))
