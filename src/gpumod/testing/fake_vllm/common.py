"""What every part of the fake vLLM shares: constants, environment knobs, vLLM-style logs."""

from __future__ import annotations

import os
import re
import sys
import time

GiB = 1024**3
MiB = 1024**2
PROCESS_NAME = "VLLM::EngineCore"
TOOL_CHOICE_ERROR = (
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
)
SLEEP_TAGS = ("weights", "kv_cache")


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return float(raw)


def version() -> str:
    return os.environ.get("FAKE_VLLM_VERSION", "0.11.0")


def _stamp() -> str:
    return time.strftime("%m-%d %H:%M:%S")


def log(msg: str, where: str = "api_server.py:1", *, proc: str = "APIServer",
        level: str = "INFO") -> None:
    """A vLLM-style log line on stdout: ``(APIServer pid=N) INFO 08-11 16:11:59 [f.py:1] msg``."""
    sys.stdout.write(f"({proc} pid={os.getpid()}) {level} {_stamp()} [{where}] {msg}\n")
    sys.stdout.flush()


def elog(msg: str, where: str, level: str = "INFO") -> None:
    log(msg, where, proc="EngineCore_DP0", level=level)


class StartupError(Exception):
    """Fail the start the way vLLM does: a traceback on stderr ending in `line`, exit 1."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def exception_line(message: str, default_type: str = "RuntimeError") -> str:
    if re.match(r"^[A-Za-z_][\w.]*(Error|Exception): ", message):
        return message
    return f"{default_type}: {message}"


def print_startup_failure(line: str) -> None:
    elog("EngineCore failed to start.", "core.py:708", level="ERROR")
    frames = (
        ("vllm/v1/engine/core.py", 699, "run_engine_core",
         "engine_core = EngineCoreProc(*args, **kwargs)"),
        ("vllm/v1/engine/core.py", 498, "__init__",
         "super().__init__(vllm_config, executor_class, log_stats,"),
        ("vllm/v1/worker/gpu_worker.py", 174, "init_device",
         "raise ValueError("),
    )
    out = ["Traceback (most recent call last):"]
    for path, lineno, func, code in frames:
        out.append(f'  File "/usr/local/lib/python3.12/dist-packages/{path}", line {lineno}, '
                   f"in {func}")
        out.append(f"    {code}")
    out.append(line)
    sys.stderr.write("\n".join(out) + "\n")
    sys.stderr.flush()
