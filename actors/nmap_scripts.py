"""The NSE scripts nmap may run: those vetted in `nmap_scripts.toml`, and no other.

The data names each script of the nmap it was written for as vetted (read, and
found to talk to the scanned target alone) with nmap's categories for it, or as
denied with the reason. nmap's categories are labels, not behaviour: a category
stands for its vetted members, so nmap is only ever given script names. An
installed nmap's own `scripts/script.db` is read to find scripts it has that
this data has never judged.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "nmap_scripts.toml"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}", flags=re.ASCII)
_DB_ENTRY = re.compile(r'Entry \{ filename = "([^"/]+)\.nse", categories = \{ ((?:"[a-z]+", )*)\} \}')


@dataclass(frozen=True)
class ScriptCatalogue:
    vetted: Mapping[str, frozenset[str]]  # script name → nmap's categories for it
    denied: tuple[tuple[str, str], ...]  # (script name or fnmatch pattern, why it never runs)
    denied_categories: Mapping[str, str]  # category → why a call may never name it

    @classmethod
    def load(cls, path: Path = DATA) -> ScriptCatalogue:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ScriptCatalogue:
        """Build from the file's tables, refusing data that vets and denies one script."""
        catalogue = cls(
            vetted={name: frozenset(categories) for name, categories in data["vetted"].items()},
            denied=tuple((script, group["reason"]) for group in data["denied"] for script in group["scripts"]),
            denied_categories=dict(data["denied_categories"]),
        )
        for name, categories in catalogue.vetted.items():
            if not _NAME.fullmatch(name) or not categories:
                raise ValueError(f"vetted script {name!r} needs a plain name and its categories")
            if catalogue.why_denied(name) is not None:
                raise ValueError(f"script {name!r} is both vetted and denied")
        return catalogue

    @functools.cached_property
    def categories(self) -> frozenset[str]:
        """The categories a call may name: those of vetted scripts, less the denied ones."""
        return frozenset(c for cs in self.vetted.values() for c in cs).difference(self.denied_categories)

    def members(self, category: str) -> tuple[str, ...]:
        return tuple(sorted(name for name, categories in self.vetted.items() if category in categories))

    def why_denied(self, name: str) -> str | None:
        return next((reason for pattern, reason in self.denied if fnmatch.fnmatchcase(name, pattern)), None)

    def expand(self, word: str) -> tuple[str, ...]:
        """The vetted scripts a script or category name stands for.

        Raises:
            ValueError: saying why, when the word is not a plain name, or names a
                denied category, a denied script or nothing vetted.
        """
        word = word.strip().lower()
        if not _NAME.fullmatch(word):
            raise ValueError(
                f"{word[:80]!r} is not a plain script or category name (no paths, wildcards or expressions)"
            )
        if word in self.denied_categories:
            raise ValueError(f"the {word!r} category is never run: {self.denied_categories[word]}")
        if word in self.categories:
            return self.members(word)
        if word in self.vetted:
            return (word,)
        reason = self.why_denied(word)
        if reason is not None:
            raise ValueError(f"{word!r} is never run: it {reason}")
        raise ValueError(
            f"{word!r} is not a vetted nmap script or category; categories: {', '.join(sorted(self.categories))}"
        )

    def admitted(self, words: Iterable[str]) -> frozenset[str]:
        """Every vetted script the given script and category names stand for."""
        return frozenset(name for word in words for name in self.expand(word))

    def unjudged(self, names: Iterable[str]) -> tuple[str, ...]:
        """The names that are neither vetted nor denied, sorted: scripts nobody has read."""
        return tuple(sorted(n for n in set(names) if n not in self.vetted and self.why_denied(n) is None))


def read_script_db(path: Path) -> dict[str, frozenset[str]]:
    """An nmap `scripts/script.db`: each script's name and the categories nmap files it under.

    Raises:
        ValueError: a line is not an entry as nmap writes them (a script hidden in
            an odd line must not go unseen).
        OSError: the file cannot be read.
    """
    scripts: dict[str, frozenset[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        entry = _DB_ENTRY.fullmatch(line.strip())
        if entry is None:
            raise ValueError(f"{path} line {number} is not a script entry: {line[:120]!r}")
        scripts[entry[1]] = frozenset(re.findall(r'"([a-z]+)"', entry[2]))
    return scripts


NMAP_SCRIPTS = ScriptCatalogue.load()
