"""Schemathesis over the OpenAPI schema, against the real server over a socket: whatever the
schema lets a client send, no answer is a server error (5xx). With and without an API key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from test_e2e import server

pytestmark = pytest.mark.e2e

KEY = "schema-fuzz-key"


@pytest.mark.parametrize("key", [None, KEY])
def test_no_request_the_schema_allows_gets_a_5xx(key: str | None, tmp_path: Path) -> None:
    env = {"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/a.db",
           "AETHERION_TIMEFRAMES": "1s,5s", "AETHERION_SIM_RATE": "20",
           **({"AETHERION_API_KEY": key} if key else {})}
    headers = {"X-API-Key": key} if key else {}
    with server(env, tmp_path / "server.log") as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=headers)
        operations = [op.ok() for op in schema.get_all_operations()]
        assert len(operations) >= 8  # market, regime and decision endpoints are all there
        failures: list[str] = []
        for op in operations:

            @settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def check(case: Any) -> None:
                r = case.call(base_url=base, headers=headers, timeout=10)
                if r.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} {case.query} -> "
                                    f"{r.status_code} {r.text[:200]}")
                if key:
                    assert r.status_code != 401, "the key was refused"

            check()
        assert not failures, "\n".join(failures[:10])
