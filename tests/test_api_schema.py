"""Schemathesis against the OpenAPI document the BentoML service publishes: no generated request gets a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.fixtures.servers import Server


@pytest.fixture(scope="module")
def api(bento_api: Server) -> Server:
    return bento_api


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_url(f"{api.url}/docs.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case, api):
    case.call_and_validate(checks=[not_a_server_error])


def test_schema_documents_the_mode_field_and_the_applied_mode(api):
    """``mode`` is an optional form field with its allowed values on both upload routes; every answer names it."""
    import httpx

    spec = httpx.get(f"{api.url}/docs.json", timeout=30).json()
    for route in ("/classify", "/classify_batch"):
        form = spec["paths"][route]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["properties"]["mode"]["enum"] == ["any", "letters", "digits"]
        assert "mode" not in form.get("required", [])
    result = spec["components"]["schemas"]["ClassifyResult"]
    assert "mode" in result["required"] and result["properties"]["mode"]["enum"] == ["any", "letters", "digits"]
