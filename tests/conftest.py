"""Shared test setup.

Tests come in three tiers, one folder each:

* ``tests/unit``        — no servers, no flows: the whole tier in about a minute (``make test-unit``)
* ``tests/integration`` — real PostgreSQL, S3 (SeaweedFS), MLflow, Prefect, BentoML and Gradio servers
* ``tests/e2e``         — the browser and the feedback loop end to end

``make test`` (what CI runs) runs all three.

Fixtures live in one plugin module per area so that each stays short and has one owner:

* ``tests/fixtures/data.py``    — prepared data (the real prep flow on the mirror, small MNIST share)
* ``tests/fixtures/models.py``  — a temporary MLflow registry with a trained tiny champion
* ``tests/fixtures/servers.py`` — real servers on loopback: PostgreSQL databases, SeaweedFS (S3), mlflow server,
  BentoML and Gradio processes
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.data", "tests.fixtures.models", "tests.fixtures.servers"]

REPO = Path(__file__).resolve().parents[1]
#: The raw-data mirror (CI sets it to ../shared/datasets); tests that need raw data are skipped without it.
MIRROR = Path(os.environ.get("UKR_HW_DATA_MIRROR", REPO.parent / "shared" / "datasets")).resolve()

os.environ.setdefault("TORCH_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "rukopys" / "glyphs.csv").exists():
        pytest.skip(f"raw-data mirror not found at {MIRROR}; set UKR_HW_DATA_MIRROR")
    return MIRROR


@pytest.fixture(autouse=True)
def mlflow_uris_restored():
    """Flows point MLflow at their store for the whole process (``tracking.configure``); a test that ran a flow
    against another store (an ``mlflow server``) must not leave the next test's bare ``mlflow`` calls there.

    Restores MLflow's own state as it was, not the URIs it resolved to: ``mlflow.set_registry_uri(get_registry_uri())``
    would pin the registry (and the ``MLFLOW_REGISTRY_URI`` variable) to the store of the day, and every later
    ``set_tracking_uri`` would leave ``models:/`` URIs resolving there."""
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = (tracking._tracking_uri, registry._registry_uri, {n: os.environ.get(n) for n in names})
    yield
    tracking._tracking_uri, registry._registry_uri = before[0], before[1]
    for name, value in before[2].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def prefect_api():
    """A real, temporary Prefect API (SQLite) for every flow the tests run: used by the integration and end-to-end
    tiers (their conftest.py), not by tests/unit, which runs no flow and needs no server."""
    from prefect.testing.utilities import prefect_test_harness

    # its start is CPU-bound (imports, migrations): minutes on a loaded 2-core machine
    with prefect_test_harness(server_startup_timeout=600):
        yield
