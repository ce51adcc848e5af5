"""The gateway's ASGI application: one OpenAI endpoint in front of a host's services.

Routes:
  POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses
       routed by the body's `model` (served model name, service name or alias)
  GET  /v1/models         every routable service with its state
  GET  /health            200 while the gateway runs (no key needed)
  GET  /metrics           Prometheus text
  GET  /gateway/status    the per-model state table (`gpumod gateway status`)

A proxied request: read the body, resolve the model (404 lists the known ones), wait
until the model is ready (the scheduler wakes or starts it, or queues the request),
forward it with the backend's own key, and pass the answer through. An SSE answer is
passed chunk by chunk as it arrives (X-Accel-Buffering: no, Cache-Control: no-cache);
a JSON answer is read whole first, so a backend that dies mid-answer gives a clean
502. A second task watches the ASGI receive channel: when the client disconnects,
the request is cancelled wherever it is (queued, waiting for a wake, or streaming)
and the upstream connection is closed, which makes the engine abort the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from gpumod.gateway.errors import ClientGone, GatewayError, stream_error
from gpumod.gateway.metrics import Metrics, UsageScanner
from gpumod.gateway.scheduler import Scheduler
from gpumod.gateway.slots import Slot
from gpumod.gateway.upstream import Upstream, request_headers, response_headers
from gpumod.ops.gateway_config import GatewayConfig

log = logging.getLogger("gpumod.gateway")
PROXIED = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                     "/v1/responses"})
MAX_BODY = 64 * 1024 * 1024
JSON_HEADERS = [(b"content-type", b"application/json")]
CLIENT_CLOSED = 499  # nginx's code for "the client went away"; only in metrics


class EngineAsleep(Exception):
    """The engine answered 503 "sleeping": someone put it to sleep behind the gateway."""


class GatewayApp:
    def __init__(self, scheduler: Scheduler, config: GatewayConfig, *,
                 upstream: Upstream | None = None, metrics: Metrics | None = None,
                 background: bool = True) -> None:
        self.scheduler = scheduler
        self.config = config
        self.upstream = upstream or Upstream()
        self.metrics = metrics or scheduler.metrics
        self.background = background
        self.tasks: list[asyncio.Task] = []
        self.last_miss_refresh = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path in PROXIED:
                if method != "POST":
                    raise GatewayError(405, f"{path} takes POST")
                await self.proxy(scope, receive, send)
            elif path == "/health":
                await self.reply(send, 200, b'{"status":"ok"}')
            elif path == "/v1/models" and method == "GET":
                await self.reply(send, 200, json.dumps(self.models()).encode())
            elif path == "/metrics" and method == "GET":
                text = self.metrics.render(self.scheduler.snapshot()).encode()
                await self.reply(send, 200, text, b"text/plain; version=0.0.4; charset=utf-8")
            elif path == "/gateway/status" and method == "GET":
                await self.reply(send, 200, json.dumps(self.status()).encode())
            else:
                raise GatewayError(404, f"no route {method} {path} on the gateway; it serves "
                                        + ", ".join(sorted(PROXIED)) + " and /v1/models")
        except GatewayError as err:
            await self.reply(send, err.status, err.body(), headers=err.headers())
        except ClientGone:
            return

    # -- lifespan ------------------------------------------------------------------------
    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed",
                                "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        await self.upstream.start()
        await self.scheduler.start()
        if self.background:
            from gpumod.gateway.idle import idle_loop

            self.tasks = [asyncio.ensure_future(idle_loop(self.scheduler)),
                          asyncio.ensure_future(self.refresh_loop())]

    async def shutdown(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.upstream.close()
        self.scheduler.close()

    async def refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh)
            try:
                await self.scheduler.refresh()
            except Exception as exc:  # the host may be busy; try again next round
                log.warning("state refresh failed: %s", exc)

    # -- small answers -------------------------------------------------------------------
    async def reply(self, send: Any, status: int, body: bytes,
                    content_type: bytes = b"application/json",
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": headers or [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body})

    def models(self) -> dict[str, Any]:
        data = []
        for slot in sorted(self.scheduler.slots.values(), key=lambda s: s.name):
            data.append({"id": slot.route.served_model, "object": "model", "created": 0,
                         "owned_by": "gpumod",
                         "gpumod": {"service": slot.name, "state": slot.state,
                                    "aliases": list(slot.route.aliases),
                                    "engine": slot.route.engine}})
        return {"object": "list", "data": data}

    def status(self) -> dict[str, Any]:
        return {"host": self.config.host, "bind": self.config.bind, "port": self.config.port,
                "default_ttl_s": self.config.default_ttl, "queue_wait_s": self.config.queue_wait,
                "models": self.scheduler.snapshot()}

    # -- proxying ------------------------------------------------------------------------
    async def read_body(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise GatewayError(413, f"the request body is over {MAX_BODY >> 20} MiB")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def resolve(self, body: bytes) -> tuple[Slot, bytes]:
        """The model's slot, and the body to forward (its `model` made the engine's own)."""
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):  # nested too deep is not JSON we can read
            raise GatewayError(400, "the request body is not JSON") from None
        model = request.get("model") if isinstance(request, dict) else None
        if not isinstance(model, str) or not model:
            raise GatewayError(400, "the request names no model: give \"model\" (a served "
                                    "model name, a service name or an alias)")
        slot = self.scheduler.resolve(model)
        now = time.monotonic()
        if slot is None and now - self.last_miss_refresh > 1.0:
            self.last_miss_refresh = now  # a service added since the last refresh? (once a s)
            await self.scheduler.refresh()
            slot = self.scheduler.resolve(model)
        if slot is None:
            known = ", ".join(self.scheduler.known()) or "none"
            raise GatewayError(404, f"unknown model {model!r}; known: {known}",
                               "model_not_found")
        upstream = slot.route.upstream_name(model)
        if upstream != model:
            try:
                body = json.dumps({**request, "model": upstream}).encode()
            except RecursionError:
                raise GatewayError(400, "the request body is nested too deeply") from None
        return slot, body

    async def proxy(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        began = time.monotonic()
        body = await self.read_body(receive)
        slot, body = await self.resolve(body)
        gone = asyncio.Event()
        task = asyncio.current_task()
        state = {"cancellable": True, "sent": False, "retried": False}

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    if state["cancellable"] and task is not None:
                        task.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        status = CLIENT_CLOSED
        held = False
        try:
            try:
                await self.scheduler.acquire(slot, gone)
                held = True
                try:
                    status = await self.forward(scope, send, slot, body, began, state)
                except EngineAsleep:  # wake it (verified) and try once more
                    held = False
                    self.scheduler.release(slot)
                    self.scheduler.engine_asleep(slot)
                    await self.scheduler.acquire(slot, gone)
                    held = True
                    state["retried"] = True
                    status = await self.forward(scope, send, slot, body, began, state)
            except GatewayError as err:
                status = err.status
                if not state["sent"]:
                    await self.reply(send, err.status, err.body(), headers=err.headers())
        except (ClientGone, asyncio.CancelledError):
            if not gone.is_set():
                raise  # cancelled for another reason (shutdown): let it through
            status = CLIENT_CLOSED
        finally:
            state["cancellable"] = False
            watcher.cancel()
            if held:
                self.scheduler.release(slot)
            self.metrics.request(slot.name, status, time.monotonic() - began)

    async def forward(self, scope: dict[str, Any], send: Any, slot: Slot, body: bytes,
                      began: float, state: dict[str, bool]) -> int:
        import aiohttp

        query = scope.get("query_string") or b""
        url = slot.route.backend + scope["path"] + (("?" + query.decode("latin-1")) if query
                                                    else "")
        key = self.scheduler.backend_key(slot)
        resp = await self.open(scope, slot, url, key, body)
        if resp.status == 401 and self.scheduler.reload_key(slot) != key:
            resp.close()  # restarted by another command with a new key: once more with it
            resp = await self.open(scope, slot, url, self.scheduler.backend_key(slot), body)
        try:
            streaming = resp.content_type == "text/event-stream"
            scanner = UsageScanner(streaming)
            extra = [(b"x-gpumod-service", slot.name.encode())]
            if not streaming:
                try:
                    data = await resp.read()
                except (aiohttp.ClientError, OSError) as exc:
                    self.scheduler.backend_failed(slot)
                    raise GatewayError(502, f"{slot.name} died while answering: {exc}",
                                       "backend_died") from None
                if resp.status == 503 and slot.route.can_sleep and not state["retried"] \
                        and b"sleeping" in data.lower():
                    raise EngineAsleep()
                scanner.feed(data)
                state["sent"] = True
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": response_headers(resp, streaming=False) + extra})
                self.metrics.first_byte_after(slot.name, time.monotonic() - began)
                await send({"type": "http.response.body", "body": data})
            else:
                state["sent"] = True
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": response_headers(resp, streaming=True) + extra})
                await self.pump(resp, send, slot, scanner, began)
            self.metrics.usage(slot.name, scanner.finish())
            return resp.status
        finally:
            resp.close()  # never back to the pool half-read; a cancelled stream aborts upstream

    async def open(self, scope: dict[str, Any], slot: Slot, url: str, key: str | None,
                   body: bytes) -> Any:
        """Send the request upstream with the backend's key; a refused connection is a 502
        (or a 404 when the service was removed meanwhile)."""
        import aiohttp

        try:
            return await self.upstream.open("POST", url, request_headers(scope["headers"], key),
                                            body)
        except (aiohttp.ClientError, OSError) as exc:
            gone = await self.scheduler.removed(slot)
            if gone is not None:
                raise gone from None
            self.scheduler.backend_failed(slot)
            raise GatewayError(502, f"{slot.name} did not answer: {exc}",
                               "backend_unreachable") from None

    async def pump(self, resp: Any, send: Any, slot: Slot, scanner: UsageScanner,
                   began: float) -> None:
        import aiohttp

        first = True
        try:
            async for chunk in resp.content.iter_any():
                if first:
                    self.metrics.first_byte_after(slot.name, time.monotonic() - began)
                    first = False
                scanner.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, OSError) as exc:
            self.scheduler.backend_failed(slot)
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "more_body": False,
                            "body": stream_error(f"{slot.name} died while answering: {exc}",
                                                 "backend_died")})
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
