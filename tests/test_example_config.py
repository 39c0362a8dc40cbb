"""`labrecon.example.toml` loads, sets every key to its default, and names every key the settings model has."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from supervisor.config import load_settings, settings_model

EXAMPLE = Path(__file__).resolve().parent.parent / "labrecon.example.toml"
_TABLE = re.compile(r"^#?\s*\[\[?([\w.]+)\]\]?\s*$")
_KEY = re.compile(r"^#?\s*([\w]+)\s*=")


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key path of a settings model: `tools.nmap.breaker.open_sec`, `auth.tokens.name`, ..."""
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        element = typing.get_args(annotation)[0] if typing.get_origin(annotation) is tuple else annotation
        if isinstance(element, type) and issubclass(element, BaseModel):
            keys |= model_keys(element, f"{prefix}{name}.")
            if element is not annotation:  # an array of tables: the key itself appears too (`faults = []`)
                keys.add(prefix + name)
        else:
            keys.add(prefix + name)
    return keys


def example_keys(text: str) -> set[str]:
    """Every key the example names, set or in a comment, with the table it stands in."""
    keys, table = set(), ""
    for line in text.splitlines():
        if match := _TABLE.match(line):
            table = match.group(1) + "."
        elif match := _KEY.match(line):
            keys.add(table + match.group(1))
    return keys


def test_the_example_loads_and_every_key_it_sets_is_at_its_default():
    example = load_settings(EXAMPLE)
    defaults = load_settings()
    machine_dependent = {"scans": {"path"}}  # the user's state directory
    assert example.model_dump(exclude=machine_dependent) == defaults.model_dump(exclude=machine_dependent)


def test_the_example_names_every_key_of_the_settings_model():
    named = example_keys(EXAMPLE.read_text())
    keys = model_keys(settings_model())
    keys -= {key for key in keys if key.startswith("policy.hosts")}  # a table of names, shown by example
    assert keys - named == set(), "keys missing from labrecon.example.toml"
    assert {key for key in named if not key.startswith("policy.hosts.")} - keys == set(), "keys that do not exist"
