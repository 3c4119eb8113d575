"""The data-prep flow: ingest → (Rukopys clean → glyphs) ∥ (MNIST decode → preprocess) ∥ (CoMNIST → drawings)
∥ (users' samples in ``data/raw/feedback`` → drawings) ∥ fonts ∥ sketchpad strokes → split → version.

Thin by design: every task is one call into :mod:`ukr_hw.data.steps`. The two data branches and the font
rendering run concurrently. Warm runs are fast twice over: the expensive steps skip their work when their outputs
exist and their input digest is unchanged (stamps, robust to deleted caches), and the Rukopys table check is
cached by Prefect on the table's content (``cache_key_fn`` + persisted result).

Operations: the flow holds the data lock (:func:`ukr_hw.ops.locks.data_lock`) while it writes ``data/processed``,
so a train, retrain or tune waits for it; the network-bound tasks (the three ingests, the DVC push) retry a
transient failure with back-off (:func:`ukr_hw.ops.retries.retry_if_transient`: a missing mirror or a wrong checksum
fails at once) and have a timeout.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from ukr_hw.data import rukopys, steps, versioning
from ukr_hw.ops.locks import data_lock
from ukr_hw.ops.retries import retry_if_transient
from ukr_hw.settings import Settings, get_settings

#: downloads (or mirror copies) of the raw sources: a dropped connection or a slow server is tried again
INGEST = {
    "retries": 3,
    "retry_delay_seconds": [10, 60, 180],
    "retry_condition_fn": retry_if_transient,
    "timeout_seconds": 1800,
}


def _table_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key for the table check: the folder (results hold its paths), CSV bytes, file listing, checking code."""
    folder = Path(parameters["rukopys_dir"]).resolve()
    h = hashlib.sha256(str(folder).encode())
    h.update((folder / "glyphs.csv").read_bytes())
    glyphs = folder / "glyphs"
    for p in sorted(glyphs.iterdir()) if glyphs.is_dir() else []:
        h.update(p.name.encode())
    h.update(inspect.getsource(rukopys).encode())
    return f"rukopys-clean-{h.hexdigest()}"


@task(name="ingest-rukopys", cache_policy=NO_CACHE, **INGEST)
def ingest_rukopys(settings: Settings) -> str:
    return steps.ingest_rukopys(settings)


@task(name="ingest-mnist", cache_policy=NO_CACHE, **INGEST)
def ingest_mnist(settings: Settings) -> str:
    return steps.ingest_mnist(settings)


@task(name="ingest-comnist", cache_policy=NO_CACHE, **INGEST)
def ingest_comnist(settings: Settings) -> str | None:
    return steps.ingest_comnist(settings)


@task(name="clean-rukopys", cache_key_fn=_table_key, persist_result=True)
def clean_rukopys(rukopys_dir: str) -> rukopys.CleanResult:
    return steps.clean_rukopys(rukopys_dir)


@task(name="glyph-prep", cache_policy=NO_CACHE)
def glyph_prep(cleaned: rukopys.CleanResult, settings: Settings) -> dict[str, Any]:
    return steps.prep_rukopys(cleaned, settings)


@task(name="mnist-prep", cache_policy=NO_CACHE)
def mnist_prep(mnist_dir: str, settings: Settings) -> dict[str, Any]:
    return steps.prep_mnist(mnist_dir, settings)


@task(name="comnist-prep", cache_policy=NO_CACHE)
def comnist_prep(comnist_dir: str | None, settings: Settings) -> dict[str, Any]:
    return steps.prep_comnist(comnist_dir, settings)


@task(name="feedback-prep", cache_policy=NO_CACHE)
def feedback_prep(settings: Settings) -> dict[str, Any]:
    return steps.prep_feedback(settings)


@task(name="font-glyphs", cache_policy=NO_CACHE)
def font_glyphs(settings: Settings) -> int:
    return steps.render_fonts(settings)


@task(name="stroke-glyphs", cache_policy=NO_CACHE)
def stroke_glyphs(settings: Settings) -> int:
    return steps.render_strokes(settings)


@task(name="merge-split", cache_policy=NO_CACHE)
def merge_split(
    rukopys_info: dict[str, Any],
    mnist_info: dict[str, Any],
    comnist_info: dict[str, Any],
    settings: Settings,
    feedback_info: dict[str, Any] | None = None,
) -> dict[str, int]:
    return steps.merge_and_split(rukopys_info, mnist_info, settings, comnist_info, feedback_info)


@task(name="preview", cache_policy=NO_CACHE)
def preview(settings: Settings) -> str:
    return steps.write_preview(settings)


@task(
    name="dvc-version",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[30, 120],
    retry_condition_fn=retry_if_transient,  # `dvc add` is idempotent; the push to the remote is the network part
    timeout_seconds=3600,
)
def dvc_version(settings: Settings, push: bool) -> str:
    return versioning.version_data(settings, push=push)


@task(name="manifest", cache_policy=NO_CACHE)
def manifest(settings: Settings, data_version: str) -> dict[str, Any]:
    return steps.write_manifest(settings, data_version)


@flow(name="prepare", log_prints=True)
def prepare(mnist_per_class: int | None = None, push: bool = True) -> dict[str, Any]:
    """Build the prepared data in ``settings.processed_dir`` and version it with DVC; returns the summary."""
    overrides = {} if mnist_per_class is None else {"mnist_per_class": mnist_per_class}
    settings = get_settings(**overrides)
    with data_lock(settings, "prepare"):
        ruk_dir = ingest_rukopys.submit(settings)
        mnist_dir = ingest_mnist.submit(settings)
        comnist_dir = ingest_comnist.submit(settings)
        fonts = font_glyphs.submit(settings)
        drawings = stroke_glyphs.submit(settings)
        ruk = glyph_prep.submit(clean_rukopys.submit(ruk_dir), settings)
        digits = mnist_prep.submit(mnist_dir, settings)
        drawings_comnist = comnist_prep.submit(comnist_dir, settings)
        users = feedback_prep.submit(settings)  # data/raw/feedback, as the retrain flow took it in
        # .result() re-raises a failed branch's own error (a clear message), not a vague "upstream not ready"
        ruk_info, mnist_info, comnist_info = ruk.result(), digits.result(), drawings_comnist.result()
        feedback_info = users.result()
        sizes = merge_split(ruk_info, mnist_info, comnist_info, settings, feedback_info)
        preview(settings)
        n_synthetic, n_strokes = fonts.result(), drawings.result()
        version = dvc_version(settings, push)
        manifest(settings, version)
    return {
        "train": sizes["train"],
        "test": sizes["test"],
        "mnist_train": mnist_info["mnist_train"],
        "mnist_test": mnist_info["mnist_test"],
        "synthetic": n_synthetic,
        "strokes": n_strokes,
        "comnist": comnist_info["n"],
        "comnist_sessions": comnist_info["sessions"],
        "comnist_excluded": comnist_info["excluded"],  # Ё Ъ Ы Э: not Ukrainian letters
        # users' samples: in train, held out, rejected since their snapshot, unreadable by today's preprocessing
        "feedback": {k: feedback_info.get(k, 0) for k in ("train", "user_test", "rejected", "bad", "case_masked")},
        "data_version": version,
        "raw_version": versioning.raw_version(settings),
    }


if __name__ == "__main__":
    print(prepare())
