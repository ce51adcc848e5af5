"""The fake vLLM's process: bind the port first (as vLLM does), start the engine, serve.

Signals during start stop it cleanly; a bug in the fake prints a traceback and exits 1,
like an engine crash. The fake GPU memory registration is removed on exit.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from gpumod.testing import fake_nvidia_smi as smi
from gpumod.testing.fake_vllm.app import build_app
from gpumod.testing.fake_vllm.args import build_parser, normalise_flags
from gpumod.testing.fake_vllm.common import StartupError, log, print_startup_failure
from gpumod.testing.fake_vllm.engine import Engine, start_engine


class _Stop(BaseException):
    """Raised by the signal handler while the engine is still starting."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _serve(engine: Engine, sock: socket.socket) -> None:
    import uvicorn

    ignore_term = os.environ.get("FAKE_VLLM_IGNORE_TERM") == "1"

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            def on_signal(sig: int, frame: Any) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                self.should_exit = True

            old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_term else on_signal)
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    config = uvicorn.Config(build_app(engine), log_level=engine.args.uvicorn_log_level,
                            lifespan="on", timeout_graceful_shutdown=5,
                            timeout_keep_alive=5)
    host, port = sock.getsockname()[:2]
    log(f"Starting vLLM API server 0 on http://{host}:{port}", "launcher.py:44")
    Server(config).run(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):  # a pipe: lines reach the reader at once
        sys.stdout.reconfigure(line_buffering=True)
    args = build_parser().parse_args(normalise_flags(sys.argv[1:] if argv is None else argv))
    ignore_term = os.environ.get("FAKE_VLLM_IGNORE_TERM") == "1"

    def stop(sig: int, frame: Any) -> None:
        raise _Stop(sig)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_term else stop)
    state_path = os.environ.get(smi.STATE_ENV)
    try:
        try:
            sock = _bind(args.host, args.port)
        except OSError as exc:
            print_startup_failure(f"OSError: [Errno {exc.errno}] {exc.strerror}")
            return 1
        try:
            engine = start_engine(args)
        except StartupError as exc:
            print_startup_failure(exc.line)
            return 1
        _serve(engine, sock)
        return 0
    except _Stop:
        log("Engine startup interrupted by a signal; shutting down.", "api_server.py:1900")
        return 0
    except Exception:  # a bug in the fake itself: say so, like an engine crash
        traceback.print_exc()
        return 1
    finally:
        if state_path:
            with contextlib.suppress(Exception):
                smi.unregister_process(state_path, os.getpid())
