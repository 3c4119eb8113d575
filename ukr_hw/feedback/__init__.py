"""The feedback store: user-confirmed drawings as PNG + JSON record, in S3 or a local folder.

Layout (under the store's root: a local folder or ``s3://bucket/prefix``)::

    YYYY/MM/DD/<sample_id>.png     the raw drawing (strokes on a transparent canvas), as PNG
    YYYY/MM/DD/<sample_id>.json    the record; written LAST, so it is the commit marker
    quarantine/YYYY/MM/DD/<sample_id>.{png,json,reason.txt}
    rejected/<sample_id>.json      an operator's rejection (reason, who, when): the sample stays, training skips it
    arrivals/YYYY/MM/DD/<sample_id>.json   a spooled sample uploaded late, under its upload day

``sample_id`` sorts by creation time (``20260114T093012345678Z-1a2b3c4d``), and the date prefix lets
:meth:`FeedbackStore.list_since` list only the days it needs. Readers list ``.json`` files only, so a sample whose
record is not written yet (or whose upload broke off) is never seen half-done.

When S3 cannot be reached the sample goes to a local *spool* folder with the same layout and is uploaded by
:meth:`FeedbackStore.flush_spool` (after the next successful save, at UI start, by :class:`SpoolFlusher` in the
background with back-off while the UI runs, or by hand): nothing is lost, and an upload is idempotent (the same
sample id, the same keys, the same bytes), so a flush cut short and repeated never makes a duplicate.

Each record carries ``source``: a salted hash of the address a sample came from (see :func:`source_id`), so that
one source's share of the training data can be capped; :meth:`FeedbackStore.records` lists records with it.

| module | what |
| --- | --- |
| :mod:`~ukr_hw.feedback.record` | the record's fields, sample ids and keys, :class:`SampleRef`, sources, errors |
| :mod:`~ukr_hw.feedback.drawing` | a sketchpad value → the PNG the store keeps (:func:`sketch_to_png`) |
| :mod:`~ukr_hw.feedback.storage` | backends: :class:`LocalBackend`, :class:`S3Backend` (``key → bytes``) |
| :mod:`~ukr_hw.feedback.store` | :class:`FeedbackStore`, from :mod:`~.saving`, :mod:`~.reading` and :mod:`~.review` |
| :mod:`~ukr_hw.feedback.spool` | :class:`SpoolFlusher`: the spool uploaded in the background |
| :mod:`~ukr_hw.feedback.grid` | :func:`sample_grid`: a contact sheet of drawings for review |

Import from here (``from ukr_hw.feedback import FeedbackStore``); the modules are the place to read the code.
"""

from __future__ import annotations

from ukr_hw.feedback.drawing import sketch_to_png
from ukr_hw.feedback.grid import sample_grid
from ukr_hw.feedback.record import (
    ARRIVALS,
    OPTIONAL_FIELDS,
    QUARANTINE,
    REJECTED,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    CorruptSample,
    InvalidSample,
    SampleRef,
    StoreUnavailable,
    new_sample_id,
    ref_for_id,
    sample_key,
    source_address,
    source_id,
    source_salt,
)
from ukr_hw.feedback.spool import SpoolFlusher
from ukr_hw.feedback.storage import Backend, LocalBackend, S3Backend, backend_for
from ukr_hw.feedback.store import FeedbackStore

__all__ = [
    "ARRIVALS",
    "OPTIONAL_FIELDS",
    "QUARANTINE",
    "REJECTED",
    "REQUIRED_FIELDS",
    "SCHEMA_VERSION",
    "Backend",
    "CorruptSample",
    "FeedbackStore",
    "InvalidSample",
    "LocalBackend",
    "S3Backend",
    "SampleRef",
    "SpoolFlusher",
    "StoreUnavailable",
    "backend_for",
    "new_sample_id",
    "ref_for_id",
    "sample_grid",
    "sample_key",
    "sketch_to_png",
    "source_address",
    "source_id",
    "source_salt",
]
