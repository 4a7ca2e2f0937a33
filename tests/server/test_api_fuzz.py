"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis).

Every operation under ``/api/v1`` is called with generated parameters and bodies, with the admin key (so
requests get past authentication and exercise the handlers). Whatever is sent, the server must never
answer 5xx, and every error must be JSON in Caracal's shape (``{"error": {"type", "code", "message"}}``).
Bounded and derandomized so that it runs in well under a minute. ``POST /ledger/verify`` is left out (it
re-reads the whole ledger on every call and takes no input).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.openapi.utils import get_openapi
from hypothesis import HealthCheck, settings

from caracal.server import api
from tests.pg import BACKEND_PARAMS, home_database
from tests.server.conftest import Live, start

BACKENDS_PER_MODULE = True


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def fuzzed(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Live]:
    yield from start(tmp_path_factory.mktemp("fuzz") / "home", home_database(request))


def _document() -> dict[str, Any]:
    """The REST part of the OpenAPI document, as the app serves it (built from the router, no server)."""
    return get_openapi(title="Caracal", version="test", routes=api.router.routes)


schema = schemathesis.openapi.from_dict(_document()).exclude(path="/api/v1/ledger/verify")


def check_error_shape(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/json"), response.text
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), response.text
        error = body["error"]
        assert {"type", "code", "message"} <= set(error), response.text
        assert all(isinstance(error[name], str) for name in ("type", "code", "message")), response.text
        assert response.status_code != 401, response.text  # the admin key is always valid


@schema.parametrize()
@settings(
    max_examples=20,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_never_fails_and_errors_are_json(case: Any, fuzzed: Live) -> None:
    response = case.call(base_url=fuzzed.base_url, headers={"Authorization": f"Bearer {fuzzed.admin_token}"})
    check_error_shape(response)
