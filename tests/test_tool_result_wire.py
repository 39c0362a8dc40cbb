"""The tools/call result is built as wire JSON directly; it must be exactly what the schema of each version allows.

`call_tool_result` skips the `mcp_types` models on the hot path, so these
tests hold it to them: for every protocol version we serve and a spread of
outcomes, the built result survives the version's schema unchanged (nothing
missing, nothing extra, nothing malformed).
"""

from __future__ import annotations

import json

import pytest
from mcp_types import SERVER_INFO_META_KEY
from mcp_types import methods as mcp_methods

from actors.results import CallOutcome, ErrorType
from transports.mcp import eras
from transports.mcp.tool_results import call_tool_result

SERVER = {"name": "labrecon", "version": "1.0.0"}

OUTCOMES = {
    "ok": CallOutcome(
        tool="nmap",
        call_id="c1",
        ok=True,
        target="10.0.0.5",
        resolved_targets=["10.0.0.5"],
        argv=["nmap", "-oX", "-", "10.0.0.5"],
        returncode=0,
        duration_sec=0.25,
        result={"hosts": [{"address": "10.0.0.5", "ports": [{"port": 22, "state": "open", "service": "ssh"}]}]},
    ),
    "validation": CallOutcome.failure("gobuster", "c2", ErrorType.VALIDATION, "target: 8.8.8.8 is outside the lab"),
    "circuit_open": CallOutcome.failure("masscan", "c3", ErrorType.CIRCUIT_OPEN, "paused", retry_after_sec=12.5),
    "timeout_partial": CallOutcome.failure(
        "nmap",
        "c4",
        ErrorType.TIMEOUT,
        "stopped",
        timed_out=True,
        stderr="ünïcode\n",
        result={"hosts": [], "complete": False},
    ),
}

VERSIONS = [*eras.HANDSHAKE_VERSIONS, *eras.MODERN_VERSIONS]


def built(outcome: CallOutcome, version: str) -> dict:
    result = call_tool_result(outcome, structured_content=eras.has_feature(version, "structured_content"))
    if version in eras.MODERN_VERSIONS:
        eras.stamp_modern(result, SERVER)
    return result


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_the_built_result_is_exactly_what_the_version_schema_keeps(version: str, name: str) -> None:
    result = built(OUTCOMES[name], version)
    sieved = mcp_methods.serialize_server_result("tools/call", version, result)
    assert sieved == result


@pytest.mark.parametrize("version", VERSIONS)
def test_structured_content_appears_exactly_where_the_version_defines_it(version: str) -> None:
    result = built(OUTCOMES["ok"], version)
    assert ("structuredContent" in result) == eras.has_feature(version, "structured_content")
    # Every version gets the envelope as JSON text, so older clients lose nothing.
    assert json.loads(result["content"][1]["text"]) == OUTCOMES["ok"].model_dump(mode="json")


def test_modern_results_are_complete_and_signed() -> None:
    for version in eras.MODERN_VERSIONS:
        result = built(OUTCOMES["validation"], version)
        assert result["resultType"] == "complete"
        assert result["_meta"][SERVER_INFO_META_KEY] == SERVER


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_is_error_mirrors_the_outcome(name: str) -> None:
    outcome = OUTCOMES[name]
    assert call_tool_result(outcome)["isError"] is (not outcome.ok)
