"""The real gateway (uvicorn, real sockets) in a thread of the test process.

As httpx tests its client against a real uvicorn in a thread: the gateway's lifecycle
calls reach the test's store (GPUMOD_HOME) and the scheduler can be inspected.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.support.real import free_port

KEY = "gw-test-key-0123456789abcdef"


class GatewayThread:
    def __init__(self, *, key: str = KEY, port: int | None = None, **settings: Any) -> None:
        import uvicorn

        from gpumod.gateway.server import build_app, uvicorn_config
        from gpumod.ops.gateway_config import GatewayConfig

        self.port = port or free_port()
        self.key = key
        settings.setdefault("refresh", 1.0)
        self.config = GatewayConfig(host=settings.pop("host", "local"), port=self.port,
                                    **settings)
        self.app = build_app(self.config, key)
        self.server = uvicorn.Server(uvicorn_config(self.app, self.config,
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def gateway(self) -> Any:
        return self.app.app  # KeyAuth -> GatewayApp

    @property
    def scheduler(self) -> Any:
        return self.gateway.scheduler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def client(self, **kw: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url, api_key=kw.pop("api_key", self.key),
                             max_retries=0, **kw)

    def slot(self, name: str) -> Any:
        return self.scheduler.slots[name]

    def wait_for(self, predicate: Any, timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)
