"""Where each value of the effective configuration came from: a default, the file, or the environment.

The layers are merged as `load_settings` merges them (environment over file over defaults; tables
merge key by key, a list is replaced whole). Every leaf of the settings model is listed once, and a
secret (any `SecretStr` or `SecretBytes` the walk meets, at any depth) only as `REDACTED`, a fixed
marker that says nothing of its length.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic_core import to_jsonable_python
from pydantic_settings import EnvSettingsSource

from supervisor.config import Settings, config_path, load_settings, read_toml, settings_model

__all__ = ["DEFAULT", "REDACTED", "ConfigValue", "config_values", "leaves", "plain", "sources_of"]

REDACTED = "<redacted>"
"""What a secret is shown as, whatever its length."""

DEFAULT = "default"

_SECRETS = (SecretStr, SecretBytes)

_ENV_PREFIX = Settings.model_config.get("env_prefix") or ""
_ENV_DELIMITER = Settings.model_config.get("env_nested_delimiter") or "__"

Key = tuple[str | int, ...]
"""A path into the settings: field names, and an index for each entry of a list of tables."""


@dataclass(frozen=True)
class ConfigValue:
    """One leaf of the effective configuration: its dotted key, its value as JSON, and its source.

    `secret`: the leaf is a secret itself, and its value is `REDACTED` (secrets inside a list or a
    map are redacted in place).

    `source` is `default`, `file <path>`, `env <VARIABLE>`, or, for a table that both merged into,
    `env <VARIABLE> over file <path>`.
    """

    key: str
    value: Any
    source: str
    secret: bool


def config_values(path: str | Path | None = None) -> list[ConfigValue]:
    """The effective configuration `load_settings(path)` builds, leaf by leaf, with each one's source.

    Raises:
        ConfigError: the configuration does not load (the same message `load_settings` gives).
    """
    settings = load_settings(path)
    path = config_path(path)
    file_data = read_toml(Path(path)) if path is not None else {}
    env_data = EnvSettingsSource(settings_model())()
    sources = sources_of(file_data, env_data, str(path) if path is not None else "", os.environ)
    return [
        ConfigValue(".".join(map(str, key)), plain(value), sources(key), isinstance(value, _SECRETS))
        for key, value in leaves(settings)
    ]


def leaves(model: BaseModel, prefix: Key = ()) -> Iterator[tuple[Key, Any]]:
    """Every leaf of `model` in declaration order; nested models and lists of models are walked into."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = (*prefix, name)
        if isinstance(value, BaseModel):
            yield from leaves(value, key)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(item, BaseModel) for item in value):
            for index, item in enumerate(value):
                yield from leaves(item, (*key, index))
        else:
            yield key, value


def plain(value: Any) -> Any:
    """`value` as JSON would carry it, every secret inside it replaced by `REDACTED`."""
    if isinstance(value, _SECRETS):
        return REDACTED
    if isinstance(value, BaseModel):
        return {name: plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        return {str(to_jsonable_python(key)): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    return to_jsonable_python(value)


class _Found(Enum):
    SET = "set"  # this layer gives the key
    ABSENT = "absent"  # this layer says nothing of it: ask the next one
    OMITTED = "omitted"  # this layer gives the list the key lies in, without it: the default applies


def sources_of(
    file_data: Mapping[str, Any], env_data: Mapping[str, Any], file_name: str, environ: Mapping[str, str]
) -> Callable[[Key], str]:
    """A function from a key to the source of its value, given the file's and the environment's layers.

    `env_data` is what the environment source made of the variables (nested, JSON decoded);
    `environ` is the variables themselves, to name the one a value came from.
    """

    def source(key: Key) -> str:
        in_env, env_value = _find(env_data, key)
        in_file, file_value = _find(file_data, key)
        if in_env is _Found.SET:
            variable = f"env {_variable(key, environ)}"
            if isinstance(env_value, Mapping) and in_file is _Found.SET and isinstance(file_value, Mapping):
                return f"{variable} over file {file_name}"  # two tables merged
            return variable
        if in_env is _Found.OMITTED:
            return DEFAULT
        if in_file is _Found.SET:
            return f"file {file_name}"
        return DEFAULT

    return source


def _find(layer: Mapping[str, Any], key: Key) -> tuple[_Found, Any]:
    node: Any = layer
    in_list = False
    for part in key:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and part < len(node):
            node, in_list = node[part], True
        else:
            return (_Found.OMITTED if in_list else _Found.ABSENT), None
    return _Found.SET, node


def _variable(key: Key, environ: Mapping[str, str]) -> str:
    """The LABRECON_* variable that set `key`: the longest one naming a table on its path (in any case)."""
    names = [str(part) for part in itertools.takewhile(lambda part: isinstance(part, str), key)]
    by_lower = {name.lower(): name for name in environ}
    for end in range(len(names), 0, -1):
        if (found := by_lower.get((_ENV_PREFIX + _ENV_DELIMITER.join(names[:end])).lower())) is not None:
            return found
    return (_ENV_PREFIX + _ENV_DELIMITER.join(names)).upper()
