"""Engine drivers: turn a ServiceSpec into argv and environment, know health and errors.

An engine never sees secrets: it only names the environment variable the
secret must reach (``secret_env``); supervisors deliver the value through a
0600 file written over stdin.

Small helpers shared by every engine live here too: parsing ``--context`` and
``--memory`` sizes, replacing a flag together with its value in both the
``--flag value`` and ``--flag=value`` forms, and the GPU count implied by
tensor/pipeline/data parallel arguments.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from gpumod.errors import UsageError
from gpumod.spec import ServiceSpec
from gpumod.units import MAX_CONTEXT, parse_tokens

# Environment every engine gets: no telemetry, predictable GPU numbering.
BASE_ENV = {
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "DO_NOT_TRACK": "1",
}



def parse_context(text: str) -> int:
    """'4k' -> 4096, '256k' -> 262144, '1m' -> 1048576, '8192' -> 8192; else UsageError."""
    return parse_tokens(text, what="context size", maximum=MAX_CONTEXT, bare_minimum=256)


def parse_memory(text: str) -> float:
    """'50%' -> 0.5, '0.9' -> 0.9 (a share of each GPU's total memory); else UsageError."""
    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100
        else:
            value = float(raw)
            if value > 1:  # "90" typed without the percent sign
                value /= 100
    except ValueError:
        raise UsageError(f"invalid memory share {text!r}",
                         hint="use a percentage like 50% or a fraction like 0.5") from None
    if not 0.01 <= value <= 1.0:
        raise UsageError(f"memory share {text!r} is out of range",
                         hint="use a percentage from 1% to 100%")
    return round(value, 4)


def replace_flag(args: Sequence[str], names: Sequence[str], value: str | None) -> list[str]:
    """Drop every occurrence of the flag (any of its names, both forms) and append names[0] value.

    ``value=None`` only removes. Pi left ``--max-model-len 64000`` behind when
    ``--context`` was given; here the old value always goes with its flag.
    """
    out: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        if arg in names:
            skip_next = True
            continue
        if any(arg.startswith(name + "=") for name in names if name.startswith("--")):
            continue
        out.append(arg)
    if value is not None:
        out += [names[0], value]
    return out


def flag_value(args: Sequence[str], names: Sequence[str]) -> str | None:
    """The last value given for a flag (either form), or None."""
    found: str | None = None
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            found = args[i + 1]
        else:
            for name in names:
                if name.startswith("--") and arg.startswith(name + "="):
                    found = arg[len(name) + 1:]
    return found


def has_flag(args: Sequence[str], names: Sequence[str]) -> bool:
    return any(arg in names or any(arg.startswith(n + "=") for n in names if n.startswith("--"))
               for arg in args)


def _positive_int(text: str | None, flag: str) -> int:
    if text is None:
        return 1
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag} must be a whole number, got {text!r}") from None
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class HealthCheck:
    path: str = "/health"
    ok_codes: tuple[int, ...] = (200,)
    loading_codes: tuple[int, ...] = (503,)


class Engine(ABC):
    """One inference server kind."""

    name: str = "base"
    binary: str = ""
    #: the environment variable through which the API key reaches the engine
    secret_env: str | None = None
    #: flags that set the context length / memory share (first is the one we add)
    context_flags: tuple[str, ...] = ()
    memory_flags: tuple[str, ...] = ()
    health = HealthCheck()
    #: markers of the engine's own error lines in its log
    error_patterns: tuple[str, ...] = (
        r"\bError\b", r"Error:", r"ERROR", r"Traceback", r"error:", r"Exception",
        r"out of memory", r"failed", r"No such file", r"not found",
    )

    @abstractmethod
    def argv(self, spec: ServiceSpec, *, bind: str, model_path: str | None = None,
             binary: str | None = None) -> list[str]:
        """The full argv (engine binary first) serving spec.model on spec.port."""

    def env(self, spec: ServiceSpec) -> dict[str, str]:
        """Non-secret environment: GPU pinning, telemetry off, the spec's own env last."""
        env = dict(BASE_ENV)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.gpus)
        env.update(spec.env)
        return env

    def secret_env_for(self, api_key: str) -> dict[str, str]:
        """The secret environment (name -> value) the engine reads its API key from."""
        return {self.secret_env: api_key} if self.secret_env else {}

    def gpu_count(self, args: Sequence[str]) -> int:
        """How many GPUs the args ask for (1 unless the engine knows better)."""
        return 1

    def served_model(self, spec: ServiceSpec) -> str:
        """The `model` name clients send in requests."""
        return spec.model

    def declared_mib(self, spec: ServiceSpec, gpu_total_mib: int) -> int | None:
        """GPU memory (MiB per GPU) the service says it will hold, from its own settings.

        What admission reserves for a start when the planner gave no estimate.
        """
        return spec.vram_mib

    def apply_context(self, args: Sequence[str], tokens: int) -> list[str]:
        if not self.context_flags:
            raise UsageError(f"--context does not apply to the {self.name} engine",
                             hint="pass the server's own flag in its command instead")
        return replace_flag(args, self.context_flags, str(tokens))

    def apply_memory(self, args: Sequence[str], share: float) -> list[str]:
        if not self.memory_flags:
            raise UsageError(f"--memory does not apply to the {self.name} engine",
                             hint="size llama.cpp with --context; vLLM takes --memory")
        return replace_flag(args, self.memory_flags, f"{share:g}")

    def error_lines(self, log: str, *, limit: int = 15) -> list[str]:
        """The engine's own error lines from its log (last `limit` of them)."""
        pattern = re.compile("|".join(self.error_patterns))
        lines = [line.rstrip() for line in log.splitlines() if line.strip()]
        hits = [line for line in lines if pattern.search(line)]
        if not hits:
            hits = lines[-limit:]
        return hits[-limit:]

    #: the engine's own processes hold its port (False where a proxy holds it, e.g.
    #: docker's): only then can a health answer be traced to the service's process group
    serves_port_itself: bool = True
    #: its start measures free GPU memory and assumes neighbours are still (vLLM): starts
    #: of such engines on one GPU go one at a time
    profiles_memory_at_start: bool = False

    #: flags gpumod sets itself; the same flag in the user's args would break health checks
    owned_flags: tuple[str, ...] = ("--port", "--host")

    def validate(self, spec: ServiceSpec) -> None:
        """Reject specs this engine cannot run (raise UsageError)."""
        for flag in self.owned_flags:
            if has_flag(spec.args, (flag,)):
                raise UsageError(f"{flag} in the engine args would override gpumod's choice",
                                 hint=f"give gpumod's own {flag} before --vllm"
                                 if flag == "--port" else "gpumod binds the engine itself")
