"""Speaking to the outside: MCP over stdio (`stdio`) and HTTP (`http/`), the protocol (`mcp/`), the ops
endpoints (`ops/`), and the `labrecon` command (`cli`)."""
