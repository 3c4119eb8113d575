"""The feedback store: user-confirmed drawings as PNG + JSON record, in S3 or a local folder.

Layout (under the store's root: a local folder or ``s3://bucket/prefix``)::

    YYYY/MM/DD/<sample_id>.png     the raw drawing (strokes on a transparent canvas), as PNG
    YYYY/MM/DD/<sample_id>.json    the record; written LAST, so it is the commit marker
    quarantine/YYYY/MM/DD/<sample_id>.{png,json,reason.txt}

``sample_id`` sorts by creation time (``20260114T093012345678Z-1a2b3c4d``), and the date prefix lets
:meth:`FeedbackStore.list_since` list only the days it needs. Readers list ``.json`` files only, so a sample whose
record is not written yet (or whose upload broke off) is never seen half-done.

When S3 cannot be reached the sample goes to a local *spool* folder with the same layout and is uploaded by
:meth:`FeedbackStore.flush_spool` (called after the next successful save, at UI start, or by hand): nothing is lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ukr_hw import labels
from ukr_hw.inference import DEFAULT_MODE, InvalidModeError, parse_mode
from ukr_hw.preprocess import EmptyImageError, PreprocessError, decode, preprocess
from ukr_hw.settings import Settings, get_settings

SCHEMA_VERSION = 1
QUARANTINE = "quarantine"
_ID_RE = re.compile(r"^(\d{8}T\d{12}Z)-[0-9a-f]{8}$")
#: Record fields every reader may rely on.
REQUIRED_FIELDS = (
    "sample_id",
    "symbol",
    "is_uppercase",
    "predicted_symbol",
    "predicted_is_uppercase",
    "model_version",
    "created_at",
    "client_id",
    "schema_version",
    "image_sha256",
    "image_width",
    "image_height",
)
#: Fields added after the first records were written, with the value a record without them means.
OPTIONAL_FIELDS: dict[str, Any] = {
    "mode": DEFAULT_MODE,  # the restriction the prediction was made under: "any", "letters" or "digits"
}


class InvalidSample(ValueError):
    """A submission the store refuses; the message says what is wrong and what to do (shown in the UI)."""


class CorruptSample(RuntimeError):
    """A stored sample that cannot be read (bad JSON, missing PNG, checksum mismatch); quarantine it."""

    def __init__(self, ref: SampleRef, reason: str) -> None:
        super().__init__(f"feedback sample {ref.key}: {reason}; move it aside with FeedbackStore.quarantine(ref, …)")
        self.ref = ref
        self.reason = reason


class StoreUnavailable(ConnectionError):
    """The backend (S3) cannot be reached right now."""


@dataclass(frozen=True, order=True)
class SampleRef:
    """Where a sample lives: ``key`` is ``YYYY/MM/DD/<sample_id>`` relative to the store root (no extension)."""

    key: str

    @property
    def sample_id(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def created_at(self) -> datetime | None:
        """Creation time parsed from the id (None for ids not made by this store)."""
        m = _ID_RE.match(self.sample_id)
        return datetime.strptime(m.group(1), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC) if m else None

    @property
    def png_key(self) -> str:
        return self.key + ".png"

    @property
    def json_key(self) -> str:
        return self.key + ".json"


def new_sample_id(now: datetime | None = None) -> str:
    """Time-sortable id: UTC timestamp with microseconds plus 32 random bits."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%S%f')}Z-{secrets.token_hex(4)}"


def sample_key(sample_id: str, created_at: datetime) -> str:
    return f"{created_at:%Y/%m/%d}/{sample_id}"


def sketch_to_png(value: Mapping[str, Any] | None) -> bytes:
    """A Gradio Sketchpad value → the raw drawing as PNG: black strokes on a transparent canvas.

    The strokes are read from the layers' alpha (the same rule as :mod:`ukr_hw.preprocess`), so the theme's canvas
    colour never leaks into the picture. Raises :class:`InvalidSample` for an empty canvas.
    """
    layers = [] if not value else [layer for layer in (value.get("layers") or []) if layer is not None]
    alphas = []
    for layer in layers:
        img = layer if isinstance(layer, Image.Image) else Image.open(layer) if isinstance(layer, str) else None
        if img is None:
            img = Image.fromarray(np.asarray(layer).astype(np.uint8))
        alphas.append(np.asarray(img.convert("RGBA"))[..., 3])
    alphas = [a for a in alphas if a.size and a.shape == alphas[0].shape]
    if not alphas or not any(a.max() > 0 for a in alphas):
        raise InvalidSample("the canvas is empty: draw a letter or digit first.")
    alpha = np.max(alphas, axis=0).astype(np.uint8)
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Backends: a flat key → bytes space


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
    """An S3 bucket/prefix (MinIO, SeaweedFS, AWS) through boto3, with short timeouts and few retries."""

    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.description = f"s3://{bucket}/{self.prefix}".rstrip("/")
        secret = settings.s3_secret_access_key
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            region_name=settings.s3_region,
            config=Config(
                connect_timeout=2,
                read_timeout=10,
                retries={"max_attempts": 1, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )
        self._bucket_ok = False

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            return fn(**kwargs)
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
                if exc2.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
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
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise KeyError(key) from exc
            raise
        return obj["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call(self.client.head_object, Bucket=self.bucket, Key=self._full(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self._full(key))

    def list(self, prefix: str) -> Iterator[str]:
        self.ensure_bucket()
        full = self._full(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(self.client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                yield obj["Key"][cut:]
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]


def backend_for(uri: str, settings: Settings) -> Backend:
    """``s3://bucket[/prefix]`` → :class:`S3Backend`; anything else is a local folder (relative to root)."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"feedback_uri {uri!r} names no bucket; use s3://bucket[/prefix]")
        return S3Backend(bucket, prefix, settings)
    return LocalBackend(settings.path(uri))


# --------------------------------------------------------------------------------------------------------------
# The store


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


class FeedbackStore:
    """Save, list, read and quarantine feedback samples (see the module docstring for the layout)."""

    def __init__(self, backend: Backend, settings: Settings | None = None, spool: LocalBackend | None = None) -> None:
        self.settings = settings or get_settings()
        self.backend = backend
        #: Only remote backends spool; a local folder that fails to write is a real error.
        self.spool = spool if spool is not None or isinstance(backend, LocalBackend) else None
        if self.spool is None and not isinstance(backend, LocalBackend):
            self.spool = LocalBackend(self.settings.path(self.settings.feedback_spool_dir))

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> FeedbackStore:
        settings = settings or get_settings()
        return cls(backend_for(settings.feedback_uri, settings), settings)

    @property
    def description(self) -> str:
        return self.backend.description

    # --- writing ---------------------------------------------------------------------------------------------

    def validate(
        self, image_bytes: bytes, symbol: str, is_uppercase: bool | None, predicted_symbol: str | None = None
    ) -> tuple[bytes, Image.Image, str, bool | None, str | None]:
        """Check a submission; returns ``(png_bytes, image, symbol, is_uppercase, predicted_symbol)`` normalised."""
        s = self.settings
        if not isinstance(image_bytes, bytes | bytearray) or not image_bytes:
            raise InvalidSample("no image was sent: draw a letter or digit first.")
        if len(image_bytes) > s.max_upload_bytes:
            raise InvalidSample(
                f"the image is {len(image_bytes):,} bytes, over the limit of {s.max_upload_bytes:,}; "
                "send a smaller one."
            )
        try:
            img = decode(bytes(image_bytes), name="the drawing")
        except PreprocessError as exc:
            raise InvalidSample(str(exc)) from exc
        if max(img.size) > s.max_image_side:
            raise InvalidSample(
                f"the image is {img.width}×{img.height} pixels, over the limit of {s.max_image_side} per side; "
                "send a smaller one."
            )
        try:
            preprocess(img)
        except EmptyImageError as exc:
            raise InvalidSample("the drawing is empty (no ink found): draw a letter or digit first.") from exc
        except PreprocessError as exc:
            raise InvalidSample(str(exc)) from exc
        try:
            symbol = labels.normalize_symbol(symbol)
            predicted = None if predicted_symbol in (None, "") else labels.normalize_symbol(predicted_symbol)
        except labels.UnknownSymbolError as exc:
            raise InvalidSample(str(exc)) from exc
        if labels.is_digit(symbol):
            if is_uppercase is not None:
                raise InvalidSample(f"digit {symbol!r} has no upper- or lowercase: send is_uppercase = null.")
        elif not isinstance(is_uppercase, bool):
            raise InvalidSample(f"letter {symbol!r} needs is_uppercase true or false: say which case you drew.")
        if img.format == "PNG":
            png = bytes(image_bytes)
        else:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            png = buf.getvalue()
        return png, img, symbol, is_uppercase, predicted

    def save(
        self,
        image_bytes: bytes,
        symbol: str,
        is_uppercase: bool | None,
        predicted_symbol: str | None = None,
        predicted_is_uppercase: bool | None = None,
        model_version: str | None = None,
        client_id: str | None = None,
        mode: str | None = DEFAULT_MODE,
    ) -> str:
        """Validate and store one sample; returns its ``sample_id``. Raises :class:`InvalidSample`.

        ``mode`` is the restriction the prediction was made under (``"any"``, ``"letters"`` or ``"digits"``, see
        :func:`ukr_hw.inference.restrict`). PNG first, JSON record last. If S3 is unreachable the sample goes to
        the spool (and is uploaded later).
        """
        try:
            mode = parse_mode(mode)
        except InvalidModeError as exc:
            raise InvalidSample(str(exc)) from exc
        png, img, symbol, is_uppercase, predicted = self.validate(image_bytes, symbol, is_uppercase, predicted_symbol)
        now = datetime.now(UTC)
        sample_id = new_sample_id(now)
        record = {
            "sample_id": sample_id,
            "symbol": symbol,
            "is_uppercase": is_uppercase,
            "predicted_symbol": predicted,
            "predicted_is_uppercase": None
            if predicted is None or labels.is_digit(predicted)
            else predicted_is_uppercase,
            "model_version": None if model_version is None else str(model_version),
            "mode": mode,
            "created_at": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "client_id": client_id,
            "schema_version": SCHEMA_VERSION,
            "image_sha256": hashlib.sha256(png).hexdigest(),
            "image_width": img.width,
            "image_height": img.height,
            "image_bytes": len(png),
        }
        ref = SampleRef(sample_key(sample_id, now))
        data = json.dumps(record, ensure_ascii=False, indent=1).encode()
        try:
            self._write(self.backend, ref, png, data)
        except StoreUnavailable:
            if self.spool is None:
                raise
            self._write(self.spool, ref, png, data)
            return sample_id
        if self.spool is not None:
            with contextlib.suppress(StoreUnavailable):
                self.flush_spool()
        return sample_id

    @staticmethod
    def _write(backend: Backend, ref: SampleRef, png: bytes, record: bytes) -> None:
        backend.put(ref.png_key, png, "image/png")
        backend.put(ref.json_key, record, "application/json")  # the commit marker, always last

    def pending(self) -> int:
        """Samples waiting in the spool."""
        return 0 if self.spool is None else sum(1 for k in self.spool.list("") if k.endswith(".json"))

    def flush_spool(self) -> int:
        """Upload spooled samples (PNG then JSON), removing each from the spool once stored; returns how many.

        Raises :class:`StoreUnavailable` if the backend is still unreachable (what was uploaded stays uploaded).
        """
        if self.spool is None:
            return 0
        done = 0
        for key in [k for k in self.spool.list("") if k.endswith(".json")]:
            ref = SampleRef(key[: -len(".json")])
            record = self.spool.get(ref.json_key)
            try:
                png = self.spool.get(ref.png_key)
            except KeyError:  # should not happen (PNG is written first); keep the record visible as corrupt
                png = None
            if png is not None:
                self.backend.put(ref.png_key, png, "image/png")
            self.backend.put(ref.json_key, record, "application/json")
            self.spool.delete(ref.json_key)
            self.spool.delete(ref.png_key)
            done += 1
        return done

    # --- reading ---------------------------------------------------------------------------------------------

    def _prefixes(self, since: datetime | None) -> list[str]:
        if since is None:
            return [""]
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        start, end = since.astimezone(UTC).date(), datetime.now(UTC).date() + timedelta(days=1)
        if start > end:
            return []
        days = _days(start, end)
        if len(days) <= 62:
            return [f"{d:%Y/%m/%d}/" for d in days]
        months = sorted({f"{d:%Y/%m}/" for d in days})
        return months if len(months) <= 36 else [""]

    def list_since(self, since: datetime | None = None) -> list[SampleRef]:
        """Committed samples (those with a JSON record) created after ``since`` (all when None), oldest first.

        Only the date prefixes from ``since`` to today are listed. Quarantined samples are not included.
        """
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        refs: set[SampleRef] = set()
        for prefix in self._prefixes(since):
            for key in self.backend.list(prefix):
                if not key.endswith(".json") or key.startswith(QUARANTINE + "/"):
                    continue
                ref = SampleRef(key[: -len(".json")])
                created = ref.created_at
                if since is not None and created is not None and created <= since:
                    continue
                refs.add(ref)
        return sorted(refs, key=lambda r: (r.sample_id, r.key))

    def read(self, ref: SampleRef | str) -> tuple[bytes, dict[str, Any]]:
        """``(png_bytes, record)``; raises :class:`CorruptSample` if the sample is broken.

        Fields of :data:`OPTIONAL_FIELDS` that an older record lacks are filled in with their defaults."""
        ref = ref if isinstance(ref, SampleRef) else SampleRef(ref)
        try:
            raw = self.backend.get(ref.json_key)
        except KeyError as exc:
            raise CorruptSample(ref, "the JSON record is missing") from exc
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptSample(ref, f"the JSON record is not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise CorruptSample(ref, "the JSON record is not an object")
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise CorruptSample(ref, f"the JSON record lacks {', '.join(missing)}")
        try:
            labels.normalize_symbol(record["symbol"])
        except labels.UnknownSymbolError as exc:
            raise CorruptSample(ref, f"bad symbol: {exc}") from exc
        try:
            png = self.backend.get(ref.png_key)
        except KeyError as exc:
            raise CorruptSample(ref, "the PNG is missing") from exc
        if hashlib.sha256(png).hexdigest() != record["image_sha256"]:
            raise CorruptSample(ref, "the PNG does not match the record's sha256")
        for field, default in OPTIONAL_FIELDS.items():
            record.setdefault(field, default)
        return png, record

    def quarantine(self, ref: SampleRef | str, reason: str) -> str:
        """Move a sample (whatever parts exist) under ``quarantine/`` with a reason file; returns the new key."""
        ref = ref if isinstance(ref, SampleRef) else SampleRef(ref)
        target = SampleRef(f"{QUARANTINE}/{ref.key}")
        note = {"sample": ref.key, "reason": reason, "quarantined_at": datetime.now(UTC).isoformat()}
        self.backend.put(target.key + ".reason.txt", json.dumps(note, ensure_ascii=False).encode(), "text/plain")
        for old, new in ((ref.png_key, target.png_key), (ref.json_key, target.json_key)):
            try:
                data = self.backend.get(old)
            except KeyError:
                continue
            self.backend.put(new, data, "application/octet-stream")
        # Remove the record first: the sample disappears from listings at once, the PNG follows.
        self.backend.delete(ref.json_key)
        self.backend.delete(ref.png_key)
        return target.key

    def quarantined(self) -> list[SampleRef]:
        """Samples under ``quarantine/`` (keys relative to the store root, with the quarantine prefix)."""
        return sorted(
            {
                SampleRef(k[: -len(".reason.txt")])
                for k in self.backend.list(QUARANTINE + "/")
                if k.endswith(".reason.txt")
            }
        )
