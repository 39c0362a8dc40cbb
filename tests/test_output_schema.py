"""The compact output schema accepts exactly what pydantic's schema accepts, and is cheaper to check.

Every value of a real outcome, in turn, is replaced by values of other JSON
types; both schemas must judge each mutant alike. That covers each field's
type, nullability and nesting, which is all `compact_schema` rewrites.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from actors.results import CallOutcome, ErrorType
from actors.tools import TOOL_SPECS
from actors.tools.schema import compact_schema
from tests.test_tool_specs import sample_outcome

REPLACEMENTS: list[Any] = [None, 0, 1.5, "x", True, [], {}, ["x"], {"k": 1}]


def outcomes(name: str) -> list[dict[str, Any]]:
    ok = sample_outcome(name)
    failed = CallOutcome.failure(name, "c2", ErrorType.CIRCUIT_OPEN, "paused", retry_after_sec=3.0)
    return [ok.model_dump(mode="json"), failed.model_dump(mode="json")]


def paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:2]):
            yield from paths(item, (*prefix, index))


def replaced(document: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copied = copy.deepcopy(document)
    parent = copied
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return copied


@pytest.mark.parametrize("name", sorted(TOOL_SPECS))
def test_both_schemas_judge_every_mutant_of_a_real_outcome_alike(name: str) -> None:
    spec = TOOL_SPECS[name]
    original = Draft202012Validator(spec.model_output_schema())
    compact = Draft202012Validator(spec.output_schema())
    checked = 0
    for document in outcomes(name):
        assert original.is_valid(document) and compact.is_valid(document)
        for path in paths(document):
            for value in REPLACEMENTS:
                mutant = replaced(document, path, value)
                assert compact.is_valid(mutant) == original.is_valid(mutant), (path, value)
                checked += 1
    assert checked > 200


@pytest.mark.parametrize("name", sorted(TOOL_SPECS))
def test_the_compact_schema_has_no_references_nullable_unions_or_titles(name: str) -> None:
    schema = TOOL_SPECS[name].output_schema()
    Draft202012Validator.check_schema(schema)
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text and '"title"' not in text
    assert '{"type": "null"}' not in text
    assert len(text) < len(json.dumps(TOOL_SPECS[name].model_output_schema()))


def test_keywords_beside_a_reference_survive_and_enums_keep_their_null() -> None:
    schema = {
        "properties": {
            "kind": {"anyOf": [{"$ref": "#/$defs/Kind"}, {"type": "null"}], "description": "which kind"},
            "size": {"$ref": "#/$defs/Size", "description": "how big"},
        },
        "$defs": {"Kind": {"enum": ["a", "b"], "type": "string", "title": "Kind"}, "Size": {"type": "integer"}},
    }
    compact = compact_schema(schema)
    assert compact["properties"]["size"] == {"type": "integer", "description": "how big"}
    kind = Draft202012Validator(compact["properties"]["kind"])
    assert kind.is_valid(None) and kind.is_valid("a") and not kind.is_valid("c")


def test_fields_named_like_annotations_are_fields_and_data_is_left_alone() -> None:
    from typing import Literal

    from pydantic import BaseModel

    class Page(BaseModel):
        url: str
        title: str | None = None
        default: int = 0
        kind: Literal["a", "b"] = "a"

    original = Page.model_json_schema(mode="serialization")
    compact = compact_schema({**original, "properties": {**original["properties"], "fixed": {"const": {"title": 1}}}})
    assert set(compact["properties"]) == {"url", "title", "default", "kind", "fixed"}
    assert compact["properties"]["fixed"] == {"const": {"title": 1}}
    validator = Draft202012Validator(compact)
    assert validator.is_valid({"url": "u", "title": None, "default": 3, "kind": "b", "fixed": {"title": 1}})
    assert not validator.is_valid({"url": "u", "title": 5})
    assert not validator.is_valid({"url": "u", "kind": "c"})
