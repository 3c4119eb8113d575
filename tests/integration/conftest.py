"""Integration tier: real servers (PostgreSQL, S3, MLflow, Prefect, BentoML, Gradio) on loopback."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _prefect(prefect_api):
    """Every test of this tier may run a flow: the temporary Prefect API is up before the first one."""
