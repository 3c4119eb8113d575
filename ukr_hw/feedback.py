"""The feedback store: user-confirmed drawings as PNG + JSON record, in S3 or a local folder.

Layout (under the store's root: a local folder or ``s3://bucket/prefix``)::

    YYYY/MM/DD/<sample_id>.png     the raw drawing (strokes on a transparent canvas), as PNG
    YYYY/MM/DD/<sample_id>.json    the record; written LAST, so it is the commit marker
    quarantine/YYYY/MM/DD/<sample_id>.{png,json,reason.txt}
    rejected/<sample_id>.json      an operator's rejection (reason, who, when): the sample stays, training skips it

``sample_id`` sorts by creation time (``20260114T093012345678Z-1a2b3c4d``), and the date prefix lets
:meth:`FeedbackStore.list_since` list only the days it needs. Readers list ``.json`` files only, so a sample whose
record is not written yet (or whose upload broke off) is never seen half-done.

When S3 cannot be reached the sample goes to a local *spool* folder with the same layout and is uploaded by
:meth:`FeedbackStore.flush_spool` (after the next successful save, at UI start, by :class:`SpoolFlusher` in the
background with back-off while the UI runs, or by hand): nothing is lost, and an upload is idempotent (the same
sample id, the same keys, the same bytes), so a flush cut short and repeated never makes a duplicate.

Each record carries ``source``: a salted hash of the address a sample came from (see :func:`source_id`), so that
one source's share of the training data can be capped; :meth:`FeedbackStore.records` lists records with it.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import tempfile
import threading
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

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
QUARANTINE = "quarantine"
REJECTED = "rejected"
#: ``arrivals/YYYY/MM/DD/<sample_id>.json``: a spooled sample uploaded late (under its upload day), so a retrain that
#: lists only the days since its high-water mark still finds it (:meth:`FeedbackStore.late_arrivals`)
ARRIVALS = "arrivals"
#: Top-level folders of the store that hold no samples.
_NOT_SAMPLES = (QUARANTINE + "/", REJECTED + "/", ARRIVALS + "/")
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
    "source": None,  # salted hash of the sender's address (source_id); None: unknown (older records, scripts)
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


def ref_for_id(sample_id: str) -> SampleRef:
    """The :class:`SampleRef` of an id made by :func:`new_sample_id` (its date is in the id)."""
    m = _ID_RE.match(sample_id)
    if not m:
        raise ValueError(f"{sample_id!r} is not a feedback sample id (like 20260114T093012345678Z-1a2b3c4d)")
    created = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    return SampleRef(sample_key(sample_id, created))


def source_address(address: str | None) -> str | None:
    """The address a limit and a record count by: an IPv4 address as is, an IPv6 address as its /64 network (one
    household or host gets a whole /64, so single v6 addresses would stop nobody); anything else as given."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address.strip()
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def source_salt(settings: Settings) -> str:
    """The salt of :func:`source_id`: ``ui_source_salt``, else a random one generated once into
    ``ui_source_salt_file`` (owner-only), so one address keeps one ``source`` across restarts."""
    if settings.ui_source_salt:
        return settings.ui_source_salt.get_secret_value()
    path = settings.path(settings.ui_source_salt_file)
    with contextlib.suppress(OSError):
        salt = path.read_text(encoding="utf-8").strip()
        if salt:
            return salt
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text(encoding="utf-8").strip() or salt
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(salt + "\n")
    return salt


def source_id(address: str | None, salt: str) -> str | None:
    """What a record stores as ``source``: ``src-`` + 16 hex digits of an HMAC-SHA256 of the (normalised) address
    under ``salt``. Stable for one address and salt, not reversible to the address without the salt."""
    norm = source_address(address)
    if norm is None:
        return None
    return "src-" + hmac.new(salt.encode(), norm.encode(), hashlib.sha256).hexdigest()[:16]


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
        self._flush_lock = threading.Lock()

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
        source: str | None = None,
    ) -> str:
        """Validate and store one sample; returns its ``sample_id``. Raises :class:`InvalidSample`.

        ``source`` identifies where the sample came from (the UI passes :func:`source_id` of the sender's address).

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
            "source": source,
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

    def _spooled(self) -> list[SampleRef]:
        if self.spool is None:
            return []
        return sorted(SampleRef(k[: -len(".json")]) for k in self.spool.list("") if k.endswith(".json"))

    def pending(self) -> int:
        """Samples waiting in the spool."""
        return len(self._spooled())

    def spool_status(self) -> dict[str, Any]:
        """``{"pending": n, "oldest_sample": id or None, "oldest_age_s": seconds or None}`` of the spool."""
        refs = self._spooled()
        created = [r.created_at for r in refs if r.created_at is not None]
        oldest = min(created) if created else None
        return {
            "pending": len(refs),
            "oldest_sample": min(refs, key=lambda r: r.created_at or datetime.max.replace(tzinfo=UTC)).sample_id
            if refs
            else None,
            "oldest_age_s": None if oldest is None else round((datetime.now(UTC) - oldest).total_seconds(), 1),
        }

    def flush_spool(self) -> int:
        """Upload spooled samples (PNG then JSON), removing each from the spool once stored; returns how many.

        Idempotent: a sample keeps its id and keys, so an upload repeated after a flush was cut short (uploaded, not
        yet removed from the spool) overwrites the same objects with the same bytes: never a duplicate. One flush
        runs at a time per store (a second caller returns 0 at once). Raises :class:`StoreUnavailable` if the
        backend is still unreachable (what was uploaded stays uploaded, the rest stays spooled).
        """
        if self.spool is None:
            return 0
        if not self._flush_lock.acquire(blocking=False):
            return 0
        try:
            done = 0
            for ref in self._spooled():
                try:
                    record = self.spool.get(ref.json_key)
                except KeyError:  # removed meanwhile (flushed by another store on the same spool)
                    continue
                try:
                    png = self.spool.get(ref.png_key)
                except KeyError:  # should not happen (PNG is written first); keep the record visible as corrupt
                    png = None
                if png is not None:
                    self.backend.put(ref.png_key, png, "image/png")
                self.backend.put(ref.json_key, record, "application/json")
                # its arrival under today's date: its own date prefix may be older than a retrain's listing window
                self.backend.put(
                    f"{ARRIVALS}/{datetime.now(UTC):%Y/%m/%d}/{ref.sample_id}.json",
                    json.dumps({"key": ref.key, "uploaded_at": datetime.now(UTC).isoformat()}).encode(),
                    "application/json",
                )
                # the record first: once it is gone the sample no longer counts as pending
                self.spool.delete(ref.json_key)
                self.spool.delete(ref.png_key)
                done += 1
            return done
        finally:
            self._flush_lock.release()

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

        Only the date prefixes from ``since`` to today are listed. Quarantined samples are not included; rejected ones
        are (they stay in the store): leave out :meth:`rejected_ids` where they must not count.
        """
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        refs: set[SampleRef] = set()
        for prefix in self._prefixes(since):
            for key in self.backend.list(prefix):
                if not key.endswith(".json") or key.startswith(_NOT_SAMPLES):
                    continue
                ref = SampleRef(key[: -len(".json")])
                created = ref.created_at
                if since is not None and created is not None and created <= since:
                    continue
                refs.add(ref)
        return sorted(refs, key=lambda r: (r.sample_id, r.key))

    def late_arrivals(self, since: datetime | None = None) -> list[SampleRef]:
        """Samples uploaded from the spool (``arrivals/``) on the days since ``since`` (all when None), whatever
        day they were drawn: with :meth:`list_since` from a high-water mark, no late upload is ever skipped."""
        refs: set[SampleRef] = set()
        for prefix in self._prefixes(since):
            for key in self.backend.list(f"{ARRIVALS}/{prefix}"):
                if key.endswith(".json"):
                    with contextlib.suppress(ValueError):
                        refs.add(ref_for_id(key.rsplit("/", 1)[-1][: -len(".json")]))
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

    # --- review: records with their source, rejections -------------------------------------------------------

    def read_record(self, ref: SampleRef | str) -> dict[str, Any]:
        """The JSON record only (no PNG read, no checksum), with :data:`OPTIONAL_FIELDS` defaults filled in.

        Raises :class:`CorruptSample` when it is missing, not JSON or lacks a required field."""
        ref = ref if isinstance(ref, SampleRef) else SampleRef(ref)
        try:
            record = json.loads(self.backend.get(ref.json_key))
        except KeyError as exc:
            raise CorruptSample(ref, "the JSON record is missing") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptSample(ref, f"the JSON record is not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or any(f not in record for f in REQUIRED_FIELDS):
            raise CorruptSample(ref, "the JSON record is not a complete feedback record")
        for field, default in OPTIONAL_FIELDS.items():
            record.setdefault(field, default)
        return record

    def records(
        self,
        since: datetime | None = None,
        *,
        client_id: str | None = None,
        source: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[tuple[SampleRef, dict[str, Any]]]:
        """``(ref, record)`` of committed samples created after ``since`` (all when None), each record with its
        ``source`` (None when unknown) and ``rejected`` (the reason, or None), optionally only one client's or one
        source's, oldest first (or newest first), at most ``limit``. Records that cannot be read are skipped (and
        logged); :meth:`read` tells why."""
        refs = self.list_since(since)
        if newest_first:
            refs.reverse()
        rejected = self.rejected_ids()
        out: list[tuple[SampleRef, dict[str, Any]]] = []
        for ref in refs:
            if limit is not None and len(out) >= limit:
                break
            try:
                record = self.read_record(ref)
            except CorruptSample as exc:
                log.warning("skipping %s", exc)
                continue
            if client_id is not None and record.get("client_id") != client_id:
                continue
            if source is not None and record.get("source") != source:
                continue
            record["rejected"] = rejected.get(ref.sample_id)
            out.append((ref, record))
        return out

    def reject(self, sample_id: str, reason: str, by: str | None = None) -> dict[str, Any]:
        """Mark a sample rejected: it stays in the store, ``rejected/<sample_id>.json`` records why, who and when,
        and :meth:`rejected_ids` lists it so training leaves it out. Rejecting again replaces the note. Raises
        :class:`KeyError` for a sample that is not in the store (a spooled one is not, until it is uploaded)."""
        if not reason or not reason.strip():
            raise ValueError("a rejection needs a reason")
        ref = ref_for_id(sample_id)
        if not self.backend.exists(ref.json_key):
            spooled = self.spool is not None and self.spool.exists(ref.json_key)
            where = " (it is still in the spool: reject it once it is uploaded)" if spooled else ""
            raise KeyError(f"no feedback sample {sample_id} in {self.description}{where}")
        note = {
            "sample_id": sample_id,
            "key": ref.key,
            "reason": reason.strip(),
            "by": by or _whoami(),
            "rejected_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        self.backend.put(
            f"{REJECTED}/{sample_id}.json", json.dumps(note, ensure_ascii=False).encode(), "application/json"
        )
        return note

    def reject_where(
        self,
        reason: str,
        *,
        client_id: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        by: str | None = None,
    ) -> list[str]:
        """Reject every sample of one client (``client_id``) or one ``source`` (created after ``since``); returns
        the ids newly rejected (ones already rejected keep their first note)."""
        if (client_id is None) == (source is None):
            raise ValueError("reject_where needs exactly one of client_id or source")
        done = []
        for ref, record in self.records(since, client_id=client_id, source=source):
            if record["rejected"] is None:
                self.reject(ref.sample_id, reason, by)
                done.append(ref.sample_id)
        return done

    def rejection(self, sample_id: str) -> dict[str, Any] | None:
        """The note of a rejected sample (``sample_id``, ``key``, ``reason``, ``by``, ``rejected_at``), else None."""
        try:
            return json.loads(self.backend.get(f"{REJECTED}/{sample_id}.json"))
        except KeyError:
            return None

    def unreject(self, sample_id: str) -> bool:
        """Take a rejection back; True when there was one."""
        key = f"{REJECTED}/{sample_id}.json"
        if not self.backend.exists(key):
            return False
        self.backend.delete(key)
        return True

    def rejected_ids(self) -> dict[str, str]:
        """``{sample_id: reason}`` of every rejected sample: what training must leave out. One listing of the
        ``rejected/`` prefix plus one small read per rejection; a note that cannot be read still rejects."""
        out: dict[str, str] = {}
        for key in self.backend.list(REJECTED + "/"):
            if not key.endswith(".json"):
                continue
            sample_id = key[len(REJECTED) + 1 : -len(".json")]
            try:
                out[sample_id] = str(json.loads(self.backend.get(key)).get("reason") or "rejected")
            except (KeyError, ValueError, AttributeError):
                out[sample_id] = "rejected (the note cannot be read)"
        return out


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# --------------------------------------------------------------------------------------------------------------
# Background upload of the spool


class SpoolFlusher:
    """Uploads the spool in a daemon thread while the UI runs: every ``interval_s`` while the store is reachable,
    backing off (doubling, up to ``max_backoff_s``) while it is not. Each attempt with samples waiting logs how
    many and the age of the oldest; :meth:`status` is what the UI's health output shows."""

    def __init__(self, store: FeedbackStore, interval_s: float = 10.0, max_backoff_s: float = 300.0) -> None:
        self.store = store
        self.interval_s = max(0.05, float(interval_s))
        self.max_backoff_s = max(self.interval_s, float(max_backoff_s))
        self.delay_s = self.interval_s
        self.last_error: str | None = None
        self.last_attempt: datetime | None = None
        self.last_success: datetime | None = None
        self.uploaded = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SpoolFlusher:
        if self.store.spool is not None and (self._thread is None or not self._thread.is_alive()):
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="feedback-spool-flusher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Try now (e.g. a save just spooled a sample), without waiting out the back-off."""
        self._wake.set()

    def flush_once(self) -> int:
        """One attempt; returns how many samples were uploaded (0 on failure, with :attr:`last_error` set)."""
        status = self.store.spool_status()
        if not status["pending"]:
            self.delay_s = self.interval_s
            return 0
        self.last_attempt = datetime.now(UTC)
        try:
            done = self.store.flush_spool()
        except StoreUnavailable as exc:
            self.last_error = str(exc)
            self.delay_s = min(self.max_backoff_s, self.delay_s * 2)
            log.warning(
                "feedback spool: %d samples waiting, the oldest %s old; %s is unreachable (%s); next try in %.0f s",
                status["pending"],
                _age(status["oldest_age_s"]),
                self.store.description,
                exc,
                self.delay_s,
            )
            return 0
        except Exception as exc:  # never let the thread die; the spool keeps the samples
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.delay_s = min(self.max_backoff_s, self.delay_s * 2)
            log.exception("feedback spool: upload failed; next try in %.0f s", self.delay_s)
            return 0
        self.last_error = None
        self.last_success = datetime.now(UTC)
        self.uploaded += done
        self.delay_s = self.interval_s
        left = self.store.spool_status()
        log.info(
            "feedback spool: uploaded %d samples to %s (the oldest was %s old); %d waiting",
            done,
            self.store.description,
            _age(status["oldest_age_s"]),
            left["pending"],
        )
        return done

    def status(self) -> dict[str, Any]:
        """The spool (``pending``, ``oldest_sample``, ``oldest_age_s``) and the flusher's last attempt."""

        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat(timespec="seconds").replace("+00:00", "Z")

        return {
            **self.store.spool_status(),
            "uploaded": self.uploaded,
            "last_attempt": iso(self.last_attempt),
            "last_success": iso(self.last_success),
            "last_error": self.last_error,
            "next_try_in_s": round(self.delay_s, 1),
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            self.flush_once()
            self._wake.wait(self.delay_s)
            self._wake.clear()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------------------------------------------
# A contact sheet of samples (review)


def sample_grid(
    images: list[bytes],
    captions: list[str] | None = None,
    marked: list[bool] | None = None,
    tile: int = 112,
    columns: int = 10,
) -> Image.Image:
    """Drawings (PNG bytes, strokes on transparent) as one RGB grid image, row by row: each on white in a
    ``tile``-pixel square with its caption under it; ``marked`` ones (e.g. rejected) framed in red."""
    from PIL import ImageDraw, ImageFont

    n = len(images)
    captions = captions or [""] * n
    marked = marked or [False] * n
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    cap_h = 18
    sheet = Image.new("RGB", (cols * tile, rows * (tile + cap_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font: Any = None
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        with contextlib.suppress(OSError):
            font = ImageFont.truetype(path, 12)
            break
    if font is None:
        font = ImageFont.load_default()
    for i, data in enumerate(images):
        x0, y0 = (i % cols) * tile, (i // cols) * (tile + cap_h)
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
            rgba = img.convert("RGBA")
            page = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            page.alpha_composite(rgba)
            thumb = page.convert("RGB")
            thumb.thumbnail((tile - 8, tile - 8))
            sheet.paste(thumb, (x0 + (tile - thumb.width) // 2, y0 + (tile - thumb.height) // 2))
        except Exception:  # an unreadable image is shown as a cross, the grid still comes out
            draw.line([(x0 + 8, y0 + 8), (x0 + tile - 8, y0 + tile - 8)], fill="grey", width=2)
            draw.line([(x0 + tile - 8, y0 + 8), (x0 + 8, y0 + tile - 8)], fill="grey", width=2)
        draw.rectangle(
            [x0, y0, x0 + tile - 1, y0 + tile - 1],
            outline="red" if marked[i] else (220, 220, 220),
            width=3 if marked[i] else 1,
        )
        draw.text((x0 + 4, y0 + tile + 2), captions[i][:24], fill="red" if marked[i] else "black", font=font)
    return sheet
