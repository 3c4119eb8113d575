"""What a feedback sample is: its record's fields, its id and keys, where it came from, and the store's errors.

Everything here is plain data and pure functions, shared by the backends, the store and its readers, so the layout
(see :mod:`ukr_hw.feedback`) and the record schema are defined once.

``sample_id`` sorts by creation time (``20260114T093012345678Z-1a2b3c4d``) and a sample's key is
``YYYY/MM/DD/<sample_id>``, so a reader lists only the days it needs. ``source`` is a salted hash of the address a
sample came from (:func:`source_id`), so one source's share of the training data can be capped without keeping the
address.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ukr_hw.inference import DEFAULT_MODE
from ukr_hw.settings import Settings

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
    # False: a letter whose writer did not say its case ("can't tell" in the sketchpad; is_uppercase null): it
    # trains the symbol head only, like a CoMNIST drawing
    "case_known": True,
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


def as_ref(ref: SampleRef | str) -> SampleRef:
    """A :class:`SampleRef` from itself or its key."""
    return ref if isinstance(ref, SampleRef) else SampleRef(ref)


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


# --------------------------------------------------------------------------------------------------------------
# Where a sample came from


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
