"""Schemathesis against the OpenAPI document the BentoML service publishes, with every check on (``-c all``).

Every operation in ``/docs.json`` is tested in the examples, coverage and fuzzing phases (positive and negative
data), against the real ``ukr-hw serve`` (the ``bento_api`` fixture), with the admin token configured through the
document's own ``adminToken`` bearer scheme (so ``ignored_auth`` probes ``/admin/reload`` without and with a wrong
token). Every generated case is counted: at least :data:`MIN_CASES` in all, 0 failures.

One check is configured, not switched off: ``positive_data_acceptance`` on the upload routes. Their schema can only
say "a binary file", and random bytes that fit it are not a PNG/JPEG/WebP drawing: the server answers them with the
4xx the document declares for exactly that case (400 not an image, 413 too large, 415 another format, 422 a blank
canvas), each with the ``Error`` body (``response_schema_conformance`` still checks it). Those statuses are added
to what counts as accepting valid-looking data there; 2xx/401/403/… stay as the defaults. That valid drawings get
200 is tested with real images in tests/integration/test_serving.py.
"""

from __future__ import annotations

import collections

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.config import SchemathesisConfig

from tests.fixtures.servers import API_TOKEN, Server

MIN_CASES = 2000
#: fuzzing examples per operation (the coverage phase adds its own deterministic cases on top)
MAX_EXAMPLES = {"/classify": 900, "/classify_batch": 900}
DEFAULT_MAX_EXAMPLES = 120
#: what an image route may answer to bytes that fit ``format: binary`` but are no drawing (declared in the document)
NOT_A_DRAWING = ["400", "413", "415", "422"]
#: schemathesis's default expected statuses for positive_data_acceptance (kept: only NOT_A_DRAWING is added)
POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]

CONFIG = {
    "seed": 26,
    "generation": {"max-examples": DEFAULT_MAX_EXAMPLES, "no-shrink": True},
    "checks": {"enabled": True},  # -c all
    "auth": {"openapi": {"adminToken": {"bearer": API_TOKEN}}},
    "operations": [
        {
            "include-path": route,
            "generation": {"max-examples": n},
            "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_DEFAULT, *NOT_A_DRAWING]}},
        }
        for route, n in MAX_EXAMPLES.items()
    ],
}

#: generated cases per operation label, filled by test_contract
CASES: collections.Counter[str] = collections.Counter()
OPERATIONS: set[str] = set()


@pytest.fixture(scope="module")
def api(bento_api: Server) -> Server:
    return bento_api


@pytest.fixture(scope="module")
def api_schema(api):
    loaded = schemathesis.openapi.from_url(f"{api.url}/docs.json", config=SchemathesisConfig.from_dict(CONFIG))
    OPERATIONS.update(op.ok().label for op in loaded.get_all_operations())
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: a failure is reported as found
    print_blob=False,
)
def test_contract(case, api):
    CASES[case.operation.label] += 1
    case.call_and_validate(timeout=30)  # no `checks=`: every check the config enables, i.e. all of them


def test_contract_generated_enough_cases():
    """Runs after test_contract (file order): every operation exercised, ≥ MIN_CASES cases in all."""
    if not CASES:
        pytest.skip("test_contract did not run in this session")
    print(dict(CASES), sum(CASES.values()))
    assert OPERATIONS and set(CASES) == OPERATIONS, f"operations not exercised: {OPERATIONS - set(CASES)}"
    assert sum(CASES.values()) >= MIN_CASES, dict(CASES)


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


def test_schema_declares_every_status_and_the_admin_auth(api):
    """Each operation's 4xx answers carry the shared Error schema; /admin/reload requires the bearer token."""
    import httpx

    spec = httpx.get(f"{api.url}/docs.json", timeout=30).json()
    error = {"$ref": "#/components/schemas/Error"}
    for route in ("/classify", "/classify_batch", "/info", "/admin/reload"):
        responses = spec["paths"][route]["post"]["responses"]
        for status in ("400", "408", "413", "415"):
            assert responses[status]["content"]["application/json"]["schema"] == error, (route, status)
    for route in ("/classify", "/classify_batch"):
        assert "422" in spec["paths"][route]["post"]["responses"]
    reload = spec["paths"]["/admin/reload"]["post"]
    assert reload["security"] == [{"adminToken": []}]
    assert {"401", "403", "503"} <= set(reload["responses"])
    assert spec["components"]["securitySchemes"]["adminToken"] == {"type": "http", "scheme": "bearer"}
