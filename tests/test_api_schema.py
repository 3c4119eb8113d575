"""Schemathesis against the OpenAPI document the BentoML service publishes: no generated request gets a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.test_serving import Server, running_api


@pytest.fixture(scope="module")
def api(champion_model, tmp_path_factory) -> Iterator[Server]:
    with running_api(tmp_path_factory.mktemp("bento-schema"), admin_token="schema-token", serve_workers="1") as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_url(f"{api.url}/docs.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case, api):
    case.call_and_validate(checks=[not_a_server_error])
