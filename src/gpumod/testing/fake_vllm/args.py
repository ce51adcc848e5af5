"""The `vllm serve` command line, as vLLM parses it (the flags gpumod and users pass)."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from typing import Any

from gpumod.testing.fake_vllm.common import version


def human_int(text: str) -> int:
    """vLLM's human-readable ints: 1k = 1000, 1K = 1024, 1m, 1M, 1g, 1G (and plain ints)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid human-readable integer: {text!r}")
    number, suffix = float(m.group(1)), m.group(2)
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}
    return int(number * scale[suffix])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm", description="vLLM CLI (gpumod fake)")
    parser.add_argument("-v", "--version", action="version", version=version())
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
    s.add_argument("--max-model-len", type=human_int, default=None)
    s.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    s.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    s.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    s.add_argument("--distributed-executor-backend", default=None,
                   choices=["ray", "mp", "uni", "external_launcher"])
    s.add_argument("--kv-cache-dtype", default="auto",
                   choices=["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc",
                            "fp8_ds_mla"])
    s.add_argument("--kv-cache-memory-bytes", type=human_int, default=None)
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
    s.add_argument("--max-num-batched-tokens", type=human_int, default=None)
    s.add_argument("--chat-template", default=None)
    s.add_argument("--generation-config", default="auto")
    s.add_argument("--async-scheduling", action=b, default=False)
    s.add_argument("--enable-chunked-prefill", action=b, default=None)
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


def normalise_flags(argv: Sequence[str]) -> list[str]:
    """vLLM accepts --max_model_len as --max-model-len."""
    out = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            key, eq, value = arg.partition("=")
            arg = key.replace("_", "-") + eq + value
        out.append(arg)
    return out



_DEFAULTS: dict[str, Any] | None = None


def build_defaults() -> dict[str, Any]:
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = vars(build_parser().parse_args(["serve", "x"]))
    return _DEFAULTS
