"""End-to-end tier: the browser, and the feedback loop through real servers."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _prefect(prefect_api):
    """Every test of this tier may run a flow: the temporary Prefect API is up before the first one."""
