"""Operating a running daemon: the ops endpoints (probes, metrics, status, faults, tool control), the
client and commands that talk to them, and the status view an operator reads."""
