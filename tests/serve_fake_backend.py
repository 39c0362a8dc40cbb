"""Serve the in-memory test backend over stdio, the way `labrecon serve` serves the runtime."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.backends import FakeBackend
from transports.logs import configure_logging
from transports.stdio import DEFAULT_MAX_MESSAGE_BYTES, serve_stdio


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--log-level", default="DEBUG")
    options = parser.parse_args()
    configure_logging(options.log_level)
    return serve_stdio(
        FakeBackend(),
        max_message_bytes=options.max_message_bytes,
        grace=options.grace,
    )


if __name__ == "__main__":
    sys.exit(main())
