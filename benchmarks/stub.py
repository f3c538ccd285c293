"""A stand-in for agent-manager, reasoning-service and webhooks that answers at once, or
after ``DELAY`` seconds (a slow agent-manager: every request waits, none is refused).

    python -m benchmarks.stub PORT [DELAY]

A bare ASGI app under uvicorn, in its own process so it does not share the runner's core.
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn

_COMMAND = json.dumps({"status": "success", "exit_code": 0, "stdout": "ok", "stderr": "",
                       "duration_ms": 1}).encode()
_ANALYSIS = json.dumps({"root_cause": "OOM", "confidence": 0.9, "summary": "OOM",
                        "recommendations": []}).encode()
DELAY = 0.0
_HEADERS = {path: [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            for path, body in (("analyze", _ANALYSIS), ("command", _COMMAND))}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if DELAY:
        await asyncio.sleep(DELAY)
    kind = "analyze" if scope["path"].endswith("/analyze") else "command"
    body = _ANALYSIS if kind == "analyze" else _COMMAND
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS[kind]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                lifespan="off")
