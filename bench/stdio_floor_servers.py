"""Two bare stdio JSON-RPC servers that only spawn the tool: what any server pays, without labrecon's work.

    .venv/bin/python bench/stdio_floor_servers.py blocking|loop-and-thread BINARY

bench/stdio_roundtrip.py runs them beside labrecon to split its added
latency into what stdio itself costs and what labrecon does on top:

- `blocking`: one thread reads a line, spawns BINARY with the same argv
  labrecon would, and writes back a `tools/call` result holding its output.
  Nothing is validated, parsed or recorded: the least a stdio server can do.
- `loop-and-thread`: the same work in labrecon's shape: an asyncio loop
  reads stdin and writes stdout, and each call is handed to a worker thread
  (as a call is handed to a tool actor) and its result handed back to the
  loop. The difference to `blocking` is the price of that shape alone.

Neither checks anything; they exist only to be measured, and only ever
run the fast fakes.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
from typing import Any

ARGV_TAIL = ["-oX", "-", "-p", "22", "10.0.0.5"]


def run_tool(binary: str) -> dict[str, Any]:
    done = subprocess.run([binary, *ARGV_TAIL], capture_output=True, stdin=subprocess.DEVNULL, check=False)
    return {"content": [{"type": "text", "text": done.stdout.decode()}], "isError": done.returncode != 0}


def answer(message: dict[str, Any], result: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode() + b"\n"


def serve_blocking(binary: str) -> None:
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        message = json.loads(line)
        if "id" not in message:
            continue
        out.write(answer(message, run_tool(binary) if message["method"] == "tools/call" else {}))
        out.flush()


async def serve_loop_and_thread(binary: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)
    work: queue.SimpleQueue[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = queue.SimpleQueue()

    def worker() -> None:
        while True:
            _message, future = work.get()
            loop.call_soon_threadsafe(future.set_result, run_tool(binary))

    threading.Thread(target=worker, daemon=True).start()

    async def call(message: dict[str, Any]) -> None:
        future = loop.create_future()
        work.put((message, future))
        writer.write(answer(message, await future))

    tasks = set()
    while line := await reader.readline():
        message = json.loads(line)
        if "id" not in message:
            continue
        if message["method"] == "tools/call":
            task = asyncio.create_task(call(message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            writer.write(answer(message, {}))


def main() -> None:
    mode, binary = sys.argv[1], sys.argv[2]
    if mode == "blocking":
        serve_blocking(binary)
    elif mode == "loop-and-thread":
        asyncio.run(serve_loop_and_thread(binary))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
