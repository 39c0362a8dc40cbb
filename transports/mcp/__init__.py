"""The Model Context Protocol itself: JSON-RPC envelopes, the two protocol eras, and the dispatcher that
maps one decoded message to its reply. Nothing here does I/O; the transports frame the bytes."""
