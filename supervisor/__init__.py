"""Keeping tool actors alive, and the embedding API built on that: `from supervisor import Runtime`."""

from typing import Any

__all__ = ["Runtime"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `supervisor.config` and friends stay cheap to import on their own.
    if name == "Runtime":
        from supervisor.runtime import Runtime

        return Runtime
    raise AttributeError(name)
