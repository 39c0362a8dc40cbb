"""Where benchmark results go: printed, and kept in a file to quote."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def report(lines: list[str], out: str | Path) -> None:
    """Print a benchmark's result lines and keep them in `out`, with the date and machine they came from."""
    header = f"# {datetime.datetime.now().isoformat(timespec='seconds')} {platform.node()} {os.cpu_count()} cpus"
    text = "\n".join([header, *lines]) + "\n"
    print(text, end="")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def percentile(values: list[float], q: float) -> float:
    """The value below which a fraction `q` of `values` lies (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
