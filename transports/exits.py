"""labrecon's exit statuses, shared by every way of serving, so process managers can act on them."""

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # a command did not do what was asked
EXIT_CONFIG: Final = 2  # the configuration or the command line is invalid
EXIT_ESCALATED: Final = 3  # the runtime gave up (restart intensity exceeded, on_intensity_exceeded = "escalate")
EXIT_SERVER_FAILED: Final = 4  # serve: the HTTP server stopped without being asked to
EXIT_UNREACHABLE: Final = 4  # status, faults, tools: the daemon could not be reached or refused us
