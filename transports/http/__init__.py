"""MCP over HTTP: the uvicorn server actor and the daemon's app, sessions, Streamable HTTP, legacy SSE,
and the rules and security every HTTP request passes."""
