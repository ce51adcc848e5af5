"""A fast fake OpenAI upstream for the gateway bench: plain ASGI under uvicorn.

`POST /v1/chat/completions` answers at once: JSON, or (``"stream": true``) an SSE
stream of ``max_tokens`` chunks (default 32), ``GATEWAY_BENCH_CHUNK_DELAY`` seconds
apart (default 0), then ``data: [DONE]``; ``GATEWAY_BENCH_REPLY_DELAY`` seconds before
any answer (an engine's service time; default 0). `GET /health` is 200. Nothing else.

Run: python bench/gateway_upstream.py PORT
It is as small as an upstream can be, so the bench measures the proxy, not the engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

CHUNK_DELAY = float(os.environ.get("GATEWAY_BENCH_CHUNK_DELAY", "0"))
REPLY_DELAY = float(os.environ.get("GATEWAY_BENCH_REPLY_DELAY", "0"))
REPLY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()


def chunk(i: int) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
            "model": "bench", "choices": [{"index": 0, "delta": {"content": f"t{i} "},
                                           "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    request = json.loads(body or b"{}")
    if REPLY_DELAY:
        await asyncio.sleep(REPLY_DELAY)  # an engine's service time
    if not request.get("stream"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": REPLY})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(int(request.get("max_tokens") or 32)):
        if CHUNK_DELAY:
            await asyncio.sleep(CHUNK_DELAY)
        await send({"type": "http.response.body", "body": chunk(i), "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, lifespan="on")
