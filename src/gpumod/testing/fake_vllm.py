"""A fake vLLM OpenAI-compatible server, faithful to the real CLI, endpoints and log lines.

Run as ``python -m gpumod.testing.fake_vllm serve MODEL [flags]`` (same shape as
``vllm serve MODEL ...``). It holds no real memory: it registers ``util × total`` MiB per GPU
in the fake nvidia-smi state (``GPUMOD_FAKE_GPU_STATE``) and removes it on exit.

Environment (besides the real ones: ``VLLM_API_KEY``, ``VLLM_SERVER_DEV_MODE``,
``CUDA_VISIBLE_DEVICES``):

- ``FAKE_VLLM_STARTUP_SECONDS`` (0.5): "model loading" time before the port opens.
- ``FAKE_VLLM_WEIGHTS_GIB`` (1.0): total weights; each GPU holds weights / (tp × pp).
- ``FAKE_VLLM_OVERHEAD_GIB`` (1.0): activation peak + non-torch memory per GPU.
- ``FAKE_VLLM_GRAPH_GIB`` (0.25): CUDA graph memory per GPU (none with --enforce-eager).
- ``FAKE_VLLM_KV_BYTES_PER_TOKEN`` (131072): KV bytes per token for the whole model
  (bf16; halved for fp8 --kv-cache-dtype; divided by tp × pp per GPU).
- ``FAKE_VLLM_MAX_MODEL_LEN`` (32768): the model's native context (when no --max-model-len).
- ``FAKE_VLLM_SLEEP_RESIDUAL_MIB`` (512): what a GPU still shows while asleep (CUDA context).
- ``FAKE_VLLM_SLEEP_KEEPS_MEMORY=1``: sleep answers 200 but frees nothing (a buggy engine).
- ``FAKE_VLLM_FAIL="msg"``: fail during startup with a traceback ending in ``msg``, exit 1.
- ``FAKE_VLLM_IGNORE_TERM=1``: ignore SIGTERM (to test KILL escalation).
- ``FAKE_VLLM_SCRIPT=path``: JSON list of turns ``{"reasoning", "content", "tool_calls":
  [{"name", "arguments"}]}``; the n-th chat request gets the n-th turn (the last repeats).
- ``FAKE_VLLM_TOKEN_DELAY`` (0): seconds between streamed chunks.
- ``FAKE_VLLM_VERSION`` (0.11.0): what ``vllm --version`` and the logs say.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import re
import signal
import socket
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpumod.testing import fake_nvidia_smi as smi

GiB = 1024**3
MiB = 1024**2
PROCESS_NAME = "VLLM::EngineCore"
TOOL_CHOICE_ERROR = (
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
)
SLEEP_TAGS = ("weights", "kv_cache")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return float(raw)


def _version() -> str:
    return os.environ.get("FAKE_VLLM_VERSION", "0.11.0")


# ----------------------------------------------------------------------------- logging


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


def _exception_line(message: str, default_type: str = "RuntimeError") -> str:
    if re.match(r"^[A-Za-z_][\w.]*(Error|Exception): ", message):
        return message
    return f"{default_type}: {message}"


def _print_startup_failure(line: str) -> None:
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


# ----------------------------------------------------------------------------- arguments


def _human_int(text: str) -> int:
    """vLLM's human-readable ints: 1k = 1000, 1K = 1024, 1m, 1M, 1g, 1G (and plain ints)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid human-readable integer: {text!r}")
    number, suffix = float(m.group(1)), m.group(2)
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}
    return int(number * scale[suffix])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm", description="vLLM CLI (gpumod fake)")
    parser.add_argument("-v", "--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="Start the vLLM OpenAI Compatible API server.",
                       usage="vllm serve [model_tag] [options]")
    b = argparse.BooleanOptionalAction
    s.add_argument("model_tag", nargs="?", default=None)
    s.add_argument("--model", default=None)
    s.add_argument("--host", default="0.0.0.0")  # noqa: S104 -- vLLM's default
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None)
    s.add_argument("--served-model-name", nargs="+", default=None)
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    s.add_argument("--max-model-len", type=_human_int, default=None)
    s.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    s.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    s.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    s.add_argument("--kv-cache-dtype", default="auto",
                   choices=["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc",
                            "fp8_ds_mla"])
    s.add_argument("--kv-cache-memory-bytes", type=_human_int, default=None)
    s.add_argument("--enable-sleep-mode", action=b, default=False)
    s.add_argument("--enable-auto-tool-choice", action=b, default=False)
    s.add_argument("--tool-call-parser", default=None)
    s.add_argument("--reasoning-parser", default=None)
    s.add_argument("--dtype", default="auto",
                   choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    s.add_argument("--quantization", "-q", default=None)
    s.add_argument("--max-num-seqs", type=int, default=None)
    s.add_argument("--enforce-eager", action=b, default=False)
    s.add_argument("--trust-remote-code", action=b, default=False)
    s.add_argument("--download-dir", default=None)
    s.add_argument("--enable-prefix-caching", action=b, default=None)
    s.add_argument("--max-num-batched-tokens", type=_human_int, default=None)
    s.add_argument("--chat-template", default=None)
    s.add_argument("--generation-config", default="auto")
    s.add_argument("--async-scheduling", action=b, default=False)
    s.add_argument("--enable-expert-parallel", action=b, default=False)
    s.add_argument("--limit-mm-per-prompt", type=json.loads, default=None)
    s.add_argument("--swap-space", type=float, default=4)
    s.add_argument("--seed", type=int, default=None)
    # Harmless real flags that launch scripts commonly pass.
    s.add_argument("--disable-log-requests", action=b, default=False)
    s.add_argument("--disable-log-stats", action=b, default=False)
    s.add_argument("--uvicorn-log-level", default="info",
                   choices=["debug", "info", "warning", "error", "critical", "trace"])
    s.add_argument("--tokenizer", default=None)
    s.add_argument("--revision", default=None)
    return parser


def _normalise_flags(argv: Sequence[str]) -> list[str]:
    """vLLM accepts --max_model_len as --max-model-len."""
    out = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            key, eq, value = arg.partition("=")
            arg = key.replace("_", "-") + eq + value
        out.append(arg)
    return out


# ----------------------------------------------------------------------------- engine model


@dataclass
class Engine:
    args: argparse.Namespace
    model: str
    served_names: list[str]
    api_key: str | None
    dev_mode: bool
    state_path: str | None
    gpu_uuids: list[str]
    per_gpu_mib: int
    weights_mib: int
    residual_mib: int
    max_model_len: int
    kv_tokens: int
    script: list[dict[str, Any]] = field(default_factory=list)
    # runtime
    sleeping: bool = False
    sleep_level: int = 0
    awake_tags: set[str] = field(default_factory=lambda: set(SLEEP_TAGS))
    weights_valid: bool = True
    chat_count: int = 0
    running: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    successes: dict[str, int] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))

    # -- memory as nvidia-smi shows it
    def _set_memory(self, mib: int) -> None:
        if self.state_path and self.gpu_uuids:
            smi.update_process(self.state_path, os.getpid(), mib, self.gpu_uuids)

    def current_mib(self) -> int:
        if not self.sleeping and self.awake_tags == set(SLEEP_TAGS):
            return self.per_gpu_mib
        mib = self.residual_mib
        if "weights" in self.awake_tags:
            mib += self.weights_mib
        if "kv_cache" in self.awake_tags:
            mib += max(self.per_gpu_mib - self.residual_mib - self.weights_mib, 0)
        return min(mib, self.per_gpu_mib)

    def sleep(self, level: int) -> None:
        t0 = time.monotonic()
        before = self.current_mib()
        keeps = os.environ.get("FAKE_VLLM_SLEEP_KEEPS_MEMORY") == "1"
        self.sleeping = True
        self.sleep_level = level
        self.awake_tags = set()
        if level >= 2:
            self.weights_valid = False
        after = before if keeps else self.current_mib()
        self._set_memory(after)
        elog(f"Sleep mode freed {(before - after) / 1024:.2f} GiB memory, "
             f"{after / 1024:.2f} GiB memory is still in use.", "gpu_worker.py:117")
        elog(f"It took {time.monotonic() - t0 + 0.05:.6f} seconds to fall asleep.",
             "executor_base.py:187")

    def wake_up(self, tags: list[str] | None) -> None:
        t0 = time.monotonic()
        wanted = set(tags) if tags else set(SLEEP_TAGS)
        self.awake_tags |= wanted
        if self.awake_tags == set(SLEEP_TAGS):
            self.sleeping = False
            self.sleep_level = 0
        self._set_memory(self.current_mib())
        elog(f"It took {time.monotonic() - t0 + 0.02:.6f} seconds to wake up tags "
             f"{sorted(wanted) if tags else list(SLEEP_TAGS)}.", "executor_base.py:203")


def _visible_gpus(state: dict[str, Any]) -> list[dict[str, Any]]:
    gpus = sorted(state["gpus"], key=lambda g: int(g["index"]))
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return gpus
    chosen = []
    for raw in cvd.split(","):
        key = raw.strip()
        if not key:
            continue
        match = [g for g in gpus if str(g["index"]) == key or g["uuid"] == key]
        if not match:
            break  # CUDA stops at the first invalid entry
        chosen.append(match[0])
    return chosen


def _start_engine(args: argparse.Namespace) -> Engine:
    """Everything vLLM does before the port opens. Raises StartupError."""
    model = args.model_tag or args.model
    if not model:
        raise StartupError("ValueError: No model specified: pass MODEL or --model.")
    served = list(args.served_model_name or [model])
    api_key = args.api_key or os.environ.get("VLLM_API_KEY") or None
    dev_mode = bool(int(os.environ.get("VLLM_SERVER_DEV_MODE", "0")))  # as vllm/envs.py
    util = args.gpu_memory_utilization
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise StartupError("TypeError: Error: --enable-auto-tool-choice requires "
                           "--tool-call-parser")
    non_default = {k: v for k, v in sorted(vars(args).items())
                   if k not in {"command", "model_tag", "api_key"}
                   and v not in (None, False) and v != build_defaults().get(k)}
    log(f"vLLM API server version {_version()}", "api_server.py:1805")
    log(f"non-default args: {non_default}", "utils.py:328")
    if not 0 < util <= 1:
        raise StartupError(f"ValueError: GPU memory utilization must be within (0, 1]. "
                           f"Got {util}.")

    tp, pp, dp = args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size
    world = tp * pp
    state_path = os.environ.get(smi.STATE_ENV)
    if not state_path or not os.path.exists(state_path):
        raise StartupError("RuntimeError: Failed to infer device type, please set the "
                           "environment variable `VLLM_LOGGING_LEVEL=DEBUG` to turn on "
                           "verbose logging to help debug the issue.")
    state = smi.read_state(state_path)
    visible = _visible_gpus(state)
    if not visible:
        raise StartupError("RuntimeError: Failed to infer device type, please set the "
                           "environment variable `VLLM_LOGGING_LEVEL=DEBUG` to turn on "
                           "verbose logging to help debug the issue.")
    if world * dp > len(visible):
        raise StartupError(
            f"ValueError: World size ({world * dp}) is larger than the number of available "
            f"GPUs ({len(visible)}) in this node. If this is intentional and you are using:\n"
            "- ray, set '--distributed-executor-backend ray'.\n"
            "- multiprocessing, set '--nnodes' appropriately.")
    used = visible[: world * dp]

    elog(f"Initializing a V1 LLM engine (v{_version()}) with config: model={model!r}, "
         f"tokenizer={args.tokenizer or model!r}, dtype={args.dtype}, "
         f"max_seq_len={args.max_model_len or 'auto'}, tensor_parallel_size={tp}, "
         f"pipeline_parallel_size={pp}, data_parallel_size={dp}, "
         f"quantization={args.quantization}, enforce_eager={args.enforce_eager}, "
         f"kv_cache_dtype={args.kv_cache_dtype}, seed={args.seed}, "
         f"served_model_name={served[0]}, enable_prefix_caching="
         f"{args.enable_prefix_caching is not False}", "core.py:77")

    # The startup check, per device: util × total must be free now.
    usage = {g["uuid"]: g for g in smi.gpu_memory(state)}
    for local, g in enumerate(used):
        info = usage[g["uuid"]]
        total_gib = int(info["memory_total_mib"]) / 1024
        free_gib = int(info["free_mib"]) / 1024
        if free_gib < util * total_gib:
            raise StartupError(
                f"ValueError: Free memory on device cuda:{local} ({free_gib:.2f}/"
                f"{total_gib:.2f} GiB) on startup is less than desired GPU memory utilization "
                f"({util}, {util * total_gib:.2f} GiB). Decrease GPU memory utilization or "
                "reduce GPU memory used by other processes.")

    total_mib = min(int(g["memory_total_mib"]) for g in used)
    total_gib = total_mib / 1024
    weights_gib = _env_float("FAKE_VLLM_WEIGHTS_GIB", 1.0) / world
    overhead_gib = _env_float("FAKE_VLLM_OVERHEAD_GIB", 1.0)
    graph_gib = 0.0 if args.enforce_eager else _env_float("FAKE_VLLM_GRAPH_GIB", 0.25)
    if args.kv_cache_memory_bytes is not None:
        kv_gib = args.kv_cache_memory_bytes / GiB
        per_gpu_mib = int((weights_gib + overhead_gib + graph_gib + kv_gib) * 1024)
    else:
        kv_gib = util * total_gib - weights_gib - overhead_gib - graph_gib
        per_gpu_mib = int(util * total_mib)
    residual = int(_env_float("FAKE_VLLM_SLEEP_RESIDUAL_MIB", 512))

    uuids = [g["uuid"] for g in used]
    smi.register_process(state_path, os.getpid(), PROCESS_NAME, uuids,
                         min(residual, per_gpu_mib))
    t0 = time.monotonic()
    elog(f"Starting to load model {model}...", "gpu_model_runner.py:2338")
    time.sleep(max(_env_float("FAKE_VLLM_STARTUP_SECONDS", 0.5), 0))
    fail = os.environ.get("FAKE_VLLM_FAIL")
    if fail:
        raise StartupError(_exception_line(fail))
    smi.update_process(state_path, os.getpid(), int(min(residual + weights_gib * 1024,
                                                        per_gpu_mib)), uuids)
    load_s = time.monotonic() - t0
    elog(f"Model loading took {weights_gib:.4f} GiB and {load_s:.6f} seconds",
         "gpu_model_runner.py:2370")
    if kv_gib <= 0:
        raise StartupError("ValueError: No available memory for the cache blocks. Try "
                           "increasing `gpu_memory_utilization` when initializing the engine.")
    elog(f"Available KV cache memory: {kv_gib:.2f} GiB", "gpu_worker.py:298")

    per_token = _env_float("FAKE_VLLM_KV_BYTES_PER_TOKEN", 131072)
    if args.kv_cache_dtype.startswith("fp8"):
        per_token /= 2
    per_token_gpu = per_token / world
    kv_tokens = int(kv_gib * GiB / per_token_gpu) // 16 * 16
    max_len = args.max_model_len or int(_env_float("FAKE_VLLM_MAX_MODEL_LEN", 32768))
    if max_len > kv_tokens:
        needed = max_len * per_token_gpu / GiB
        raise StartupError(
            f"ValueError: To serve at least one request with the models's max seq len "
            f"({max_len}), ({needed:.2f} GiB KV cache is needed, which is larger than the "
            f"available KV cache memory ({kv_gib:.2f} GiB). Based on the available memory, the "
            f"estimated maximum model length is {kv_tokens}. Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the "
            "engine.")
    elog(f"GPU KV cache size: {kv_tokens:,} tokens", "kv_cache_utils.py:1087")
    elog(f"Maximum concurrency for {max_len:,} tokens per request: "
         f"{kv_tokens / max_len:.2f}x", "kv_cache_utils.py:1091")
    if not args.enforce_eager:
        elog(f"Graph capturing finished in {max(1, round(load_s))} secs, took "
             f"{graph_gib:.2f} GiB", "gpu_model_runner.py:3480")
    smi.update_process(state_path, os.getpid(), per_gpu_mib, uuids)
    elog(f"init engine (profile, create kv cache, warmup model) took "
         f"{time.monotonic() - t0:.2f} seconds", "core.py:210")

    script: list[dict[str, Any]] = []
    script_path = os.environ.get("FAKE_VLLM_SCRIPT")
    if script_path:
        with open(script_path, encoding="utf-8") as fh:
            script = json.load(fh)
        if not isinstance(script, list) or not all(isinstance(t, dict) for t in script):
            raise StartupError("ValueError: FAKE_VLLM_SCRIPT must hold a JSON list of turns")
    if args.enable_sleep_mode and not dev_mode:
        log("Sleep mode is enabled, but VLLM_SERVER_DEV_MODE is not set: the /sleep and "
            "/wake_up endpoints are not served.", "api_server.py:1700", level="WARNING")
    if dev_mode:
        log("SECURITY WARNING: Development endpoints are enabled! This should NOT be used "
            "in production!", "api_server.py:1718", level="WARNING")
    return Engine(args=args, model=model, served_names=served, api_key=api_key,
                  dev_mode=dev_mode, state_path=state_path, gpu_uuids=uuids,
                  per_gpu_mib=per_gpu_mib, weights_mib=int(weights_gib * 1024),
                  residual_mib=min(residual, per_gpu_mib), max_model_len=max_len,
                  kv_tokens=kv_tokens, script=script)


_DEFAULTS: dict[str, Any] | None = None


def build_defaults() -> dict[str, Any]:
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = vars(build_parser().parse_args(["serve", "x"]))
    return _DEFAULTS


# ----------------------------------------------------------------------------- replies


def _count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+$", text)


def _fragments(text: str, size: int = 8) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


@dataclass
class Turn:
    reasoning: str | None
    content: str | None
    tool_calls: list[dict[str, str]]
    finish: str = "stop"


def _error(message: str, status: int, err_type: str, param: str | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": err_type, "param": param,
                                   "code": status}}, status_code=status)


class Replies:
    """Decides what the "model" says for a request."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine

    def next_turn(self, last_user: str, *, max_tokens: int | None, tools_allowed: bool,
                  forced_tool: str | None) -> Turn:
        e = self.e
        if not e.weights_valid:
            return Turn(None, "!!!!!!!!", [], "length")
        if e.script:
            raw = e.script[min(e.chat_count, len(e.script) - 1)]
            e.chat_count += 1
            calls = [{"name": str(c["name"]),
                      "arguments": c["arguments"] if isinstance(c.get("arguments"), str)
                      else json.dumps(c.get("arguments", {}))}
                     for c in raw.get("tool_calls") or []]
            turn = Turn(raw.get("reasoning"), raw.get("content"), calls)
        else:
            e.chat_count += 1
            text = f"Echo: {last_user}".strip()
            words = _pieces(text)
            finish = "stop"
            if max_tokens is not None and len(words) > max_tokens:
                text, finish = "".join(words[:max_tokens]).rstrip(), "length"
            turn = Turn(None, text, [], finish)
        if forced_tool and not turn.tool_calls:
            turn.tool_calls = [{"name": forced_tool, "arguments": "{}"}]
        if turn.tool_calls and not tools_allowed:
            # the model still "says" the call; without a parser it stays in the text
            raw_calls = "".join(
                "<tool_call>\n" + json.dumps({"name": c["name"],
                                              "arguments": json.loads(c["arguments"] or "{}")})
                + "\n</tool_call>" for c in turn.tool_calls)
            turn.content = (turn.content or "") + raw_calls
            turn.tool_calls = []
        if turn.reasoning and not e.args.reasoning_parser:
            turn.content = f"<think>\n{turn.reasoning}\n</think>\n\n{turn.content or ''}"
            turn.reasoning = None
        if turn.tool_calls:
            turn.finish = "tool_calls"
        return turn


# ----------------------------------------------------------------------------- the app


def build_app(engine: Engine) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    replies = Replies(engine)
    guarded = ("/v1", "/v2", "/inference", "/cohere")

    def authorised(request: Request) -> bool:
        if engine.api_key is None or request.method == "OPTIONS":
            return True
        if not request.url.path.startswith(guarded):
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token == engine.api_key

    async def body_of(request: Request) -> dict[str, Any] | Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error("Invalid JSON body", 400, "BadRequestError")
        if not isinstance(body, dict):
            return _error("Request body must be a JSON object", 400, "BadRequestError")
        model = body.get("model")
        if model is not None and model not in engine.served_names:
            return _error(f"The model `{model}` does not exist.", 404, "NotFoundError",
                          "model")
        return body

    def sleeping_error() -> Response:
        return _error("The engine is sleeping; wake it up with POST /wake_up first.", 503,
                      "ServiceUnavailableError")

    def usage(prompt: int, completion: int) -> dict[str, Any]:
        return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                "completion_tokens": completion, "prompt_tokens_details": None}

    def account(prompt: int, completion: int, finish: str) -> None:
        engine.prompt_tokens += prompt
        engine.generation_tokens += completion
        engine.successes[finish] = engine.successes.get(finish, 0) + 1

    async def pause() -> None:
        delay = _env_float("FAKE_VLLM_TOKEN_DELAY", 0.0)
        if delay > 0:
            await asyncio.sleep(delay)

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    # -- open endpoints
    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def metrics(request: Request) -> Response:
        label = f'engine="0",model_name="{engine.served_names[0]}"'
        in_flight = engine.running * 512
        kv_perc = min(in_flight / engine.kv_tokens, 1.0) if engine.kv_tokens else 0.0
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{label}}} {float(engine.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{label}}} 0.0",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{label}}} {kv_perc}",
            "# HELP vllm:engine_sleep_state Engine sleep state; awake = 0 means engine is "
            "sleeping; weights_offloaded = 1 means sleep level 1.",
            "# TYPE vllm:engine_sleep_state gauge",
            f'vllm:engine_sleep_state{{{label},sleep_state="awake"}} '
            f"{0.0 if engine.sleeping else 1.0}",
            f'vllm:engine_sleep_state{{{label},sleep_state="weights_offloaded"}} '
            f"{1.0 if engine.sleep_level == 1 else 0.0}",
            f'vllm:engine_sleep_state{{{label},sleep_state="discard_all"}} '
            f"{1.0 if engine.sleep_level == 2 else 0.0}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{label}}} {float(engine.prompt_tokens)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{label}}} {float(engine.generation_tokens)}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
        ]
        for reason in ("stop", "length", "tool_calls"):
            lines.append(f'vllm:request_success_total{{{label},finished_reason="{reason}"}} '
                         f"{float(engine.successes.get(reason, 0))}")
        return PlainTextResponse("\n".join(lines) + "\n",
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": engine.created, "owned_by": "vllm",
                 "root": engine.model, "parent": None, "max_model_len": engine.max_model_len,
                 "permission": [{"id": f"modelperm-{uuid.uuid4().hex}",
                                 "object": "model_permission", "created": engine.created,
                                 "allow_create_engine": False, "allow_sampling": True,
                                 "allow_logprobs": True, "allow_search_indices": False,
                                 "allow_view": True, "allow_fine_tuning": False,
                                 "organization": "*", "group": None, "is_blocking": False}]}
                for name in engine.served_names]
        return JSONResponse({"object": "list", "data": data})

    def tool_policy(body: dict[str, Any]) -> tuple[bool, str | None] | Response:
        """(tool calls may be parsed, forced tool name) or a 400."""
        tools = body.get("tools") or []
        choice = body.get("tool_choice")
        if not tools:
            return False, None
        if choice is None or choice == "auto":
            if not (engine.args.enable_auto_tool_choice and engine.args.tool_call_parser):
                return _error(TOOL_CHOICE_ERROR, 400, "BadRequestError")
            return True, None
        if choice == "none":
            return False, None
        if choice == "required":
            first = tools[0].get("function", {}).get("name") if tools else None
            return True, first
        if isinstance(choice, dict):
            return True, (choice.get("function") or {}).get("name") or choice.get("name")
        return _error(f"Invalid tool_choice: {choice!r}", 400, "BadRequestError",
                      "tool_choice")

    # -- chat
    async def chat(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error("messages: Field required", 400, "BadRequestError", "messages")
        if engine.sleeping:
            return sleeping_error()
        policy = tool_policy(body)
        if isinstance(policy, Response):
            return policy
        tools_allowed, forced = policy
        last_user = next((_text_of(m.get("content")) for m in reversed(messages)
                          if isinstance(m, dict) and m.get("role") == "user"), "")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        turn = replies.next_turn(last_user, max_tokens=max_tokens, tools_allowed=tools_allowed,
                                 forced_tool=forced)
        prompt_tokens = _count_tokens(json.dumps(messages)) + _count_tokens(
            json.dumps(body.get("tools") or ""))
        completion_tokens = (_count_tokens(turn.reasoning or "")
                             + _count_tokens(turn.content or "")
                             + sum(_count_tokens(c["name"] + c["arguments"])
                                   for c in turn.tool_calls))
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        name = body.get("model") or engine.served_names[0]
        calls: list[dict[str, Any]] = [
            {"id": f"chatcmpl-tool-{uuid.uuid4().hex}", "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in turn.tool_calls]
        with_reasoning = bool(engine.args.reasoning_parser)

        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": turn.content,
                                       "refusal": None, "annotations": None, "audio": None,
                                       "function_call": None, "tool_calls": calls}
            if with_reasoning:
                message["reasoning_content"] = turn.reasoning
                message["reasoning"] = turn.reasoning
            account(prompt_tokens, completion_tokens, turn.finish)
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": turn.finish, "stop_reason": None}],
                "service_tier": None, "system_fingerprint": None,
                "usage": usage(prompt_tokens, completion_tokens), "prompt_logprobs": None,
                "kv_transfer_params": None})

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                        "model": name, "choices": [{"index": 0, "delta": delta,
                                                    "logprobs": None,
                                                    "finish_reason": finish,
                                                    **({"stop_reason": None} if finish
                                                       else {})}]})

        async def stream() -> AsyncIterator[str]:
            engine.running += 1
            try:
                yield chunk({"role": "assistant", "content": ""})
                for piece in _pieces(turn.reasoning or ""):
                    await pause()
                    yield chunk({"reasoning_content": piece, "reasoning": piece})
                for piece in _pieces(turn.content or ""):
                    await pause()
                    yield chunk({"content": piece})
                for i, call in enumerate(calls):
                    await pause()
                    yield chunk({"tool_calls": [{"index": i, "id": call["id"],
                                                 "type": "function",
                                                 "function": {"name": call["function"]["name"],
                                                              "arguments": ""}}]})
                    for frag in _fragments(call["function"]["arguments"]):
                        if frag:
                            yield chunk({"tool_calls": [{"index": i,
                                                         "function": {"arguments": frag}}]})
                yield chunk({}, turn.finish)
                if include_usage:
                    yield sse({"id": rid, "object": "chat.completion.chunk",
                               "created": created, "model": name, "choices": [],
                               "usage": usage(prompt_tokens, completion_tokens)})
                yield "data: [DONE]\n\n"
                account(prompt_tokens, completion_tokens, turn.finish)
            finally:
                engine.running -= 1

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- completions
    async def completions(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = " ".join(str(p) for p in prompt)
        if not isinstance(prompt, str):
            return _error("prompt: Field required", 400, "BadRequestError", "prompt")
        if engine.sleeping:
            return sleeping_error()
        max_tokens = body.get("max_tokens") or 16
        if not engine.weights_valid:
            words, finish = ["!!!!!!!!"], "length"
        else:
            words = _pieces(f" Echo: {prompt}")
            finish = "stop"
            if len(words) > max_tokens:
                words, finish = words[:max_tokens], "length"
        text = "".join(words)
        p_tok, c_tok = _count_tokens(prompt), _count_tokens(text)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        name = body.get("model") or engine.served_names[0]
        if not body.get("stream"):
            account(p_tok, c_tok, finish)
            return JSONResponse({
                "id": rid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": finish, "stop_reason": None,
                             "prompt_logprobs": None}],
                "usage": usage(p_tok, c_tok), "service_tier": None,
                "system_fingerprint": None, "kv_transfer_params": None})

        async def stream() -> AsyncIterator[str]:
            engine.running += 1
            try:
                for i, w in enumerate(words):
                    await pause()
                    last = i == len(words) - 1
                    yield sse({"id": rid, "object": "text_completion", "created": created,
                               "model": name,
                               "choices": [{"index": 0, "text": w, "logprobs": None,
                                            "finish_reason": finish if last else None,
                                            "stop_reason": None}]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield sse({"id": rid, "object": "text_completion", "created": created,
                               "model": name, "choices": [], "usage": usage(p_tok, c_tok)})
                yield "data: [DONE]\n\n"
                account(p_tok, c_tok, finish)
            finally:
                engine.running -= 1

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- responses (gpt-oss style clients)
    async def responses(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        raw_input = body.get("input")
        if raw_input is None:
            return _error("input: Field required", 400, "BadRequestError", "input")
        if engine.sleeping:
            return sleeping_error()
        if isinstance(raw_input, str):
            last_user = raw_input
        else:
            last_user = next((_text_of(m.get("content")) for m in reversed(raw_input)
                              if isinstance(m, dict) and m.get("role") == "user"), "")
        tools = body.get("tools") or []
        turn = replies.next_turn(last_user, max_tokens=body.get("max_output_tokens"),
                                 tools_allowed=bool(tools), forced_tool=None)
        output: list[dict[str, Any]] = []
        if turn.reasoning:
            output.append({"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "summary": [],
                           "content": [{"type": "reasoning_text", "text": turn.reasoning}],
                           "encrypted_content": None, "status": None})
        for c in turn.tool_calls:
            output.append({"id": f"fc_{uuid.uuid4().hex}", "type": "function_call",
                           "call_id": f"call_{uuid.uuid4().hex}", "name": c["name"],
                           "arguments": c["arguments"], "status": "completed"})
        if turn.content or not output:
            output.append({"id": f"msg_{uuid.uuid4().hex}", "type": "message",
                           "role": "assistant", "status": "completed",
                           "content": [{"type": "output_text", "text": turn.content or "",
                                        "annotations": [], "logprobs": None}]})
        p_tok = _count_tokens(json.dumps(raw_input))
        r_tok = _count_tokens(turn.reasoning or "")
        c_tok = r_tok + _count_tokens(turn.content or "") + sum(
            _count_tokens(c["name"] + c["arguments"]) for c in turn.tool_calls)
        resp = {
            "id": f"resp_{uuid.uuid4().hex}", "object": "response",
            "created_at": int(time.time()), "model": body.get("model") or engine.served_names[0],
            "status": "completed", "background": False, "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "metadata": None,
            "output": output, "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": body.get("reasoning"), "service_tier": "auto",
            "temperature": body.get("temperature", 1.0), "text": None,
            "tool_choice": body.get("tool_choice", "auto"), "tools": tools, "top_p": 1.0,
            "truncation": "disabled", "user": None,
            "usage": {"input_tokens": p_tok, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": c_tok,
                      "output_tokens_details": {"reasoning_tokens": r_tok},
                      "total_tokens": p_tok + c_tok},
        }
        account(p_tok, c_tok, turn.finish)
        if not body.get("stream"):
            return JSONResponse(resp)

        async def stream() -> AsyncIterator[str]:
            seq = 0

            def event(kind: str, payload: dict[str, Any]) -> str:
                nonlocal seq
                seq += 1
                data = {"type": kind, "sequence_number": seq - 1, **payload}
                return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

            yield event("response.created",
                        {"response": {**resp, "status": "in_progress", "output": []}})
            for idx, item in enumerate(output):
                yield event("response.output_item.added", {"output_index": idx, "item": item})
                if item["type"] == "message":
                    text = item["content"][0]["text"]
                    for piece in _pieces(text):
                        await pause()
                        yield event("response.output_text.delta",
                                    {"item_id": item["id"], "output_index": idx,
                                     "content_index": 0, "delta": piece, "logprobs": []})
                    yield event("response.output_text.done",
                                {"item_id": item["id"], "output_index": idx,
                                 "content_index": 0, "text": text, "logprobs": []})
                yield event("response.output_item.done", {"output_index": idx, "item": item})
            yield event("response.completed", {"response": resp})

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- dev endpoints (VLLM_SERVER_DEV_MODE=1)
    async def sleep_ep(request: Request) -> Response:
        raw = request.query_params.get("level", "1")
        if raw not in {"1", "2"}:
            return _error(f"Invalid sleep level {raw!r}: expected 1 or 2", 400,
                          "BadRequestError", "level")
        if not engine.args.enable_sleep_mode:
            return _error("Sleep mode is not enabled in the model config", 500,
                          "InternalServerError")
        if not engine.sleeping:
            engine.sleep(int(raw))
        return Response(status_code=200)

    async def wake_ep(request: Request) -> Response:
        tags = request.query_params.getlist("tags")
        bad = [t for t in tags if t not in SLEEP_TAGS]
        if bad:
            return _error(f"Unknown wake-up tags {bad}; expected weights and/or kv_cache",
                          400, "BadRequestError", "tags")
        log(f"wake up the engine with tags: {tags or None}", "api_server.py:1005")
        if not engine.args.enable_sleep_mode:
            return _error("Sleep mode is not enabled in the model config", 500,
                          "InternalServerError")
        engine.wake_up(tags or None)
        return Response(status_code=200)

    async def is_sleeping(request: Request) -> Response:
        return JSONResponse({"is_sleeping": engine.sleeping})

    async def collective_rpc(request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "Invalid JSON format"}, status_code=400)
        method = body.get("method") if isinstance(body, dict) else None
        if not method:
            return JSONResponse({"error": "Missing 'method' in request body"}, status_code=400)
        if method == "reload_weights":
            if "weights" not in engine.awake_tags:
                return _error("Cannot reload weights while the weights are asleep; call "
                              "/wake_up?tags=weights first", 500, "InternalServerError")
            engine.weights_valid = True
            elog("Reloading weights inplace...", "gpu_model_runner.py:2410")
        elif method not in {"sleep", "wake_up", "is_sleeping"}:
            return _error(f"Method {method} not found on the worker", 500,
                          "InternalServerError")
        world = engine.args.tensor_parallel_size * engine.args.pipeline_parallel_size
        return JSONResponse({"results": [None] * world})

    async def reset_prefix_cache(request: Request) -> Response:
        elog("Successfully reset prefix cache", "block_pool.py:321")
        return Response(status_code=200)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
    ]
    if engine.dev_mode:
        routes += [
            Route("/sleep", sleep_ep, methods=["POST"]),
            Route("/wake_up", wake_ep, methods=["POST"]),
            Route("/is_sleeping", is_sleeping, methods=["GET"]),
            Route("/collective_rpc", collective_rpc, methods=["POST"]),
            Route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"]),
        ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            from starlette.requests import Request as Req

            if not authorised(Req(scope)):
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(
                    scope, receive, send)
                return
        await app(scope, receive, send)

    return asgi


# ----------------------------------------------------------------------------- process


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
    args = build_parser().parse_args(_normalise_flags(sys.argv[1:] if argv is None else argv))
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
            _print_startup_failure(f"OSError: [Errno {exc.errno}] {exc.strerror}")
            return 1
        try:
            engine = _start_engine(args)
        except StartupError as exc:
            _print_startup_failure(exc.line)
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


if __name__ == "__main__":
    sys.exit(main())
