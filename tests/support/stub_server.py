"""A tiny scripted OpenAI-compatible server for the agent's unit tests.

It speaks just enough of Chat Completions and the Responses API (streamed as
server-sent events) to drive the loop: the n-th request gets the n-th scripted
turn. It records every request body so tests can check what was sent back.
The integration tests use the package's fake vLLM instead; they take
`foreign_http_port` from here: a port some other program answers.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubServer:
    def __init__(self, turns: list[dict[str, Any]], *, api_key: str | None = None,
                 reject_tools: bool = False, model: str = "stub-model",
                 reasoning_field: str = "reasoning_content") -> None:
        self.turns = turns
        self.api_key = api_key
        self.reject_tools = reject_tools
        self.model = model
        self.reasoning_field = reasoning_field
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._served = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_turn(self) -> dict[str, Any]:
        with self._lock:
            index = self._served
            self._served += 1
        if index < len(self.turns):
            return self.turns[index]
        return {"content": "(script exhausted)"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if stub.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {stub.api_key}":
                    return True
                self._json(401, {"error": {"message": "Unauthorized", "type": "auth"}})
                return False

            def do_GET(self) -> None:
                stub.paths.append(self.path)
                if not self._authorised():
                    return
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [
                        {"id": stub.model, "object": "model", "created": 0, "owned_by": "x"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                stub.paths.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self._authorised():
                    return
                stub.requests.append(body)
                if body.get("tools") and stub.reject_tools:
                    self._json(400, {"object": "error", "type": "BadRequestError", "code": 400,
                                     "message": '"auto" tool choice requires '
                                                "--enable-auto-tool-choice and "
                                                "--tool-call-parser to be set"})
                    return
                turn = stub._next_turn()
                if self.path == "/v1/chat/completions":
                    events = list(_chat_chunks(turn, stub.model, stub.reasoning_field))
                elif self.path == "/v1/responses":
                    events = list(_responses_events(turn, stub.model))
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        return Handler


def _chat_chunks(turn: dict[str, Any], model: str, field: str):
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    reasoning = turn.get("reasoning") or ""
    for i in range(0, len(reasoning), 7):
        yield chunk({field: reasoning[i:i + 7]})
    content = turn.get("content") or ""
    for i in range(0, len(content), 5):
        yield chunk({"content": content[i:i + 5]})
    for n, call in enumerate(turn.get("tool_calls") or []):
        args = call["arguments"]
        first = {"index": n, "type": "function",
                 "function": {"name": call["name"], "arguments": ""}}
        if not call.get("no_id"):
            first["id"] = f"chatcmpl-tool-{n}"
        yield chunk({"tool_calls": [first]})
        for i in range(0, len(args), 4):  # arguments arrive in pieces
            yield chunk({"tool_calls": [{"index": n, "function": {"arguments": args[i:i + 4]}}]})
    yield chunk({}, "tool_calls" if turn.get("tool_calls") else "stop")
    yield {**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                                            "total_tokens": 15}}


def _responses_events(turn: dict[str, Any], model: str):
    seq = iter(range(1000))
    response = {"id": "resp_1", "object": "response", "created_at": 0, "model": model,
                "output": [], "status": "in_progress", "parallel_tool_calls": True,
                "tool_choice": "auto", "tools": []}
    yield {"type": "response.created", "sequence_number": next(seq), "response": response}
    index = 0
    if turn.get("reasoning"):
        yield {"type": "response.reasoning_text.delta", "sequence_number": next(seq),
               "item_id": "rs_1", "output_index": index, "content_index": 0,
               "delta": turn["reasoning"]}
        index += 1
    if turn.get("content"):
        for i in range(0, len(turn["content"]), 5):
            yield {"type": "response.output_text.delta", "sequence_number": next(seq),
                   "item_id": "msg_1", "output_index": index, "content_index": 0,
                   "delta": turn["content"][i:i + 5], "logprobs": []}
        index += 1
    for n, call in enumerate(turn.get("tool_calls") or []):
        yield {"type": "response.output_item.done", "sequence_number": next(seq),
               "output_index": index,
               "item": {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_r{n}",
                        "name": call["name"], "arguments": call["arguments"],
                        "status": "completed"}}
        index += 1
    done = {**response, "status": "completed",
            "usage": {"input_tokens": 20, "output_tokens": 7, "total_tokens": 27,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}
    yield {"type": "response.completed", "sequence_number": next(seq), "response": done}


class _Always200(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def foreign_http_port() -> Iterator[int]:
    """A port answered 200 by this test process: not any service's own process group
    (a squatter on a service's port, as the health and status checks must tell)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Always200)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
