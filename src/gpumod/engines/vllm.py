"""vLLM: `vllm serve MODEL --host H --port P [args]`, the API key by VLLM_API_KEY.

Sleep levels 1 and 2 are a capability of the engine (``VLLMSleep``); a sleep-enabled
launch is prepared by :func:`prepare_vllm_launch` (sleep mode on, the dev-mode
environment, loopback only: the dev endpoints have no authentication).
"""

from __future__ import annotations

from collections.abc import Sequence

from gpumod.engines.base import (
    Engine,
    HealthCheck,
    _positive_int,
    flag_value,
    has_flag,
    replace_flag,
)
from gpumod.engines.sleep import VLLMSleep
from gpumod.errors import UsageError
from gpumod.spec import ServiceSpec

# Opens vLLM's unauthenticated dev endpoints (/sleep, /wake_up, /collective_rpc, ...).
DEV_MODE_ENV = "VLLM_SERVER_DEV_MODE"

TP = ("--tensor-parallel-size", "-tp")
PP = ("--pipeline-parallel-size", "-pp")
DP = ("--data-parallel-size", "-dp")


class VLLMEngine(Engine, VLLMSleep):
    name = "vllm"
    binary = "vllm"
    secret_env = "VLLM_API_KEY"  # noqa: S105 - a variable name, not a value
    context_flags = ("--max-model-len",)
    memory_flags = ("--gpu-memory-utilization",)
    # /health is 200 once the engine is up (the port opens only after init).
    health = HealthCheck("/health", ok_codes=(200,), loading_codes=())
    # its start measures free memory and assumes neighbours are still: one start at a
    # time per GPU (see gpumod.ops.admission)
    profiles_memory_at_start = True
    error_patterns = (
        r"Error", r"ERROR", r"Traceback", r"Exception", r"out of memory", r"OOM",
        r"error:", r"No such file", r"not found", r"Free memory on device",
    )

    def argv(self, spec: ServiceSpec, *, bind: str, model_path: str | None = None,
             binary: str | None = None) -> list[str]:
        return [binary or self.binary, "serve", model_path or spec.model,
                "--host", bind, "--port", str(spec.port), *spec.args]

    def env(self, spec: ServiceSpec) -> dict[str, str]:
        env = super().env(spec)
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        # Off unless asked for: a value inherited from the host's environment must not
        # open the dev endpoints of an engine bound to 0.0.0.0.
        env.setdefault(DEV_MODE_ENV, "0")
        return env

    def served_model(self, spec: ServiceSpec) -> str:
        """vLLM answers to --served-model-name (its first value) when given."""
        return flag_value(spec.args, ("--served-model-name",)) or spec.model

    def declared_mib(self, spec: ServiceSpec, gpu_total_mib: int) -> int | None:
        """--gpu-memory-utilization is a share of the whole card (0.9 when not given)."""
        if spec.vram_mib:
            return spec.vram_mib
        util = flag_value(spec.args, self.memory_flags) or "0.9"
        try:
            return int(float(util) * gpu_total_mib)
        except ValueError:
            return None

    def gpu_count(self, args: Sequence[str]) -> int:
        """tensor x pipeline x data parallel sizes (each 1 when absent)."""
        return (_positive_int(flag_value(args, TP), TP[0])
                * _positive_int(flag_value(args, PP), PP[0])
                * _positive_int(flag_value(args, DP), DP[0]))


def dev_mode_enabled(value: str | None) -> bool:
    """Does vLLM take this VLLM_SERVER_DEV_MODE value as on?

    vLLM reads it as ``bool(int(value))`` (vllm/envs.py), so "2", "01", " 1" and "+1" are
    on too. A value vLLM cannot parse counts as on here (fail safe: loopback);
    check_dev_mode() refuses it before anything starts.
    """
    if value is None:
        return False
    try:
        return int(value) != 0
    except ValueError:
        return True


def check_dev_mode(value: str | None) -> None:
    """UsageError for a VLLM_SERVER_DEV_MODE value vLLM would crash on at start."""
    if value is None:
        return
    try:
        int(value)
    except ValueError:
        raise UsageError(f"{DEV_MODE_ENV}={value!r} is not a number: vLLM would fail to start",
                         hint=f"use {DEV_MODE_ENV}=1 (dev endpoints on, loopback only) or 0"
                         ) from None


def prepare_vllm_launch(argv: Sequence[str], env: dict[str, str]) -> tuple[list[str],
                                                                            dict[str, str]]:
    """What sleep needs from a vLLM launch: sleep mode on, dev mode env, loopback only."""
    args = list(argv)
    host = flag_value(args, ("--host",))
    if host not in (None, "127.0.0.1", "localhost", "::1"):
        args = replace_flag(args, ("--host",), "127.0.0.1")
    elif host is None:
        args += ["--host", "127.0.0.1"]
    if not has_flag(args, ("--enable-sleep-mode",)):
        args.append("--enable-sleep-mode")
    env = dict(env)
    env[DEV_MODE_ENV] = "1"
    alloc = env.get("PYTORCH_CUDA_ALLOC_CONF", "")
    if "expandable_segments:True" in alloc.replace(" ", ""):
        raise UsageError("vLLM sleep mode does not work with "
                         "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
                         hint="remove that variable or use --sleep none")
    return args, env
