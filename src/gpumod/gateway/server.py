"""Run the gateway: uvicorn around the ASGI app, and the `python -m gpumod.gateway` entry.

`python -m gpumod.gateway serve --config FILE [--snapshot FILE]` is what the supervisor
runs (on this machine, or on a pod, where gpumod's code is shipped by `gpumod gateway
start --pod`). The key comes from the environment (PI_API_KEY, from the gateway's 0600
env file), never from argv. With --snapshot (pods) the host's service records are
loaded into the pod's own store first, so the pod-side gateway drives its services
through the same lifecycle as the CLI does here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from gpumod.ops.gateway_config import GatewayConfig

if TYPE_CHECKING:  # uvicorn loads when the gateway is served
    import uvicorn


def build_app(config: GatewayConfig, key: str, *, lifecycle: Any = None,
              background: bool = True) -> Any:
    """The keyed ASGI app for `config` (the lifecycle adapter for config.host by default)."""
    from gpumod.gateway.adapter import Lifecycle
    from gpumod.gateway.app import GatewayApp
    from gpumod.gateway.auth import KeyAuth
    from gpumod.gateway.metrics import Metrics
    from gpumod.gateway.scheduler import Scheduler

    lifecycle = lifecycle or Lifecycle(config.host, start_timeout=config.start_timeout)
    scheduler = Scheduler(lifecycle, config, Metrics())
    return KeyAuth(GatewayApp(scheduler, config, background=background), key)


def uvicorn_config(app: Any, config: GatewayConfig, **overrides: Any) -> uvicorn.Config:
    """uvicorn's settings: uvloop and httptools where installed, no access log, 30 s for
    in-flight requests at shutdown; `overrides` replace any of them (tests)."""
    import importlib.util

    import uvicorn

    fast_loop = importlib.util.find_spec("uvloop") is not None
    fast_http = importlib.util.find_spec("httptools") is not None
    options: dict[str, Any] = {"host": config.bind, "port": config.port, "lifespan": "on",
               "log_level": "warning", "access_log": False,
               "loop": "uvloop" if fast_loop else "asyncio",
               "http": "httptools" if fast_http else "h11",
               "timeout_keep_alive": 30, "timeout_graceful_shutdown": 30}
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(config: GatewayConfig, key: str) -> None:
    """Serve until SIGTERM, SIGINT or SIGHUP (in-flight requests get 30 s to finish)."""
    import signal
    import threading

    import uvicorn

    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn_config(build_app(config, key), config))
    import gpumod

    logging.getLogger("gpumod.gateway").info(
        "gateway for %s on http://%s:%d (gpumod %s from %s)", config.host, config.bind,
        config.port, gpumod.__version__, os.path.dirname(gpumod.__file__))
    # uvicorn drains on SIGINT/SIGTERM only; a closed terminal (`gateway run`) must not
    # cut requests short either. Left alone where SIGHUP is ignored (the supervisor's nohup).
    hangup = None
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        hangup = signal.signal(signal.SIGHUP,
                               lambda _sig, frame: server.handle_exit(signal.SIGTERM, frame))
    try:
        server.run()
    finally:
        if hangup is not None:
            signal.signal(signal.SIGHUP, hangup)
    if not server.started:
        raise SystemExit(3)


def main(argv: list[str] | None = None) -> int:
    from gpumod.errors import GpumodError

    parser = argparse.ArgumentParser(prog="python -m gpumod.gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve the gateway described by a config file")
    run.add_argument("--config", required=True)
    run.add_argument("--snapshot", help="service records to load into this host's store")
    args = parser.parse_args(argv)
    try:
        from gpumod.ops.startplan import api_key_from_env

        key = api_key_from_env()  # the checks `gateway start` made (its env file may be edited)
        config = GatewayConfig.load(args.config)
        if args.snapshot:
            import json

            from gpumod.ops.gateway_remote import import_snapshot
            from gpumod.ops.session import open_store

            with open(args.snapshot, encoding="utf-8") as fh:
                import_snapshot(open_store(), json.load(fh))
        serve(config, key)
    except GpumodError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    return 0
