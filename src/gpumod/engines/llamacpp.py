"""llama.cpp's `llama-server` serving one GGUF model, the API key by LLAMA_API_KEY.

`-c` (context) and `-ngl` (layers on the GPU) are passed explicitly: with
llama.cpp's automatic fitting left on, unset values change with free memory
and the deployment would not be predictable.

A service with ``sleep_mode == "router"`` runs llama-server in router mode instead (a
folder of GGUF files or a preset .ini, models loaded and unloaded on demand): sleep is
then a capability of the engine (``RouterSleep``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from gpumod.engines.base import Engine, HealthCheck, has_flag
from gpumod.engines.sleep import RouterSleep
from gpumod.errors import UsageError
from gpumod.spec import ServiceSpec

DEFAULT_CONTEXT = 4096
NGL = ("-ngl", "--gpu-layers", "--n-gpu-layers")
ROUTER_FLAGS = ("--models-dir", "--models-preset")


class LlamaCppEngine(Engine, RouterSleep):
    name = "llamacpp"
    binary = "llama-server"
    secret_env = "LLAMA_API_KEY"  # noqa: S105 - a variable name, not a value
    context_flags = ("-c", "--ctx-size")
    memory_flags = ()
    # /health answers 503 while the model loads and 200 when it is ready.
    health = HealthCheck("/health", ok_codes=(200,), loading_codes=(503,))
    error_patterns = (
        r"error", r"ERROR", r"failed", r"No such file", r"invalid", r"unknown argument",
        r"out of memory", r"exiting",
    )

    def argv(self, spec: ServiceSpec, *, bind: str, model_path: str | None = None,
             binary: str | None = None) -> list[str]:
        if spec.sleep_mode == "router":
            router = spec.extra.get("router") or {}
            return router_argv(binary or self.binary, spec.model, bind=bind, port=spec.port,
                               models_max=int(router.get("models_max", 1)),
                               autoload=bool(router.get("autoload", True)), args=spec.args)
        path = model_path or spec.model
        args = list(spec.args)
        if not has_flag(args, self.context_flags):
            args = ["-c", str(DEFAULT_CONTEXT), *args]
        if spec.gpus and not has_flag(args, NGL):
            args = ["-ngl", "999", *args]
        return [binary or self.binary, "-m", path, "--alias", self.served_model(spec),
                "--host", bind, "--port", str(spec.port), *args]

    def gpu_count(self, args: Sequence[str]) -> int:
        return 1

    def served_model(self, spec: ServiceSpec) -> str:
        """The HF id as typed, or the file name without .gguf for a path."""
        if spec.model.startswith(("/", "~", ".")):
            base = posixpath.basename(spec.model)
            return base[:-5] if base.lower().endswith(".gguf") else base
        return spec.model

    def validate(self, spec: ServiceSpec) -> None:
        if spec.sleep_mode == "router":
            router_argv(self.binary, spec.model, bind="127.0.0.1", port=1)  # path checks
            return
        super().validate(spec)
        if has_flag(spec.args, ROUTER_FLAGS):
            raise UsageError("llama.cpp router mode is not a single-model deployment",
                             hint="start one GGUF model per deployment (router mode is for modes)")


def router_argv(binary: str, models: str, *, bind: str, port: int, models_max: int = 1,
                autoload: bool = True, args: Sequence[str] = ()) -> list[str]:
    """llama-server in router mode: a folder of GGUF files, or a preset .ini file."""
    if not models.startswith("/"):
        raise UsageError(f"router mode needs an absolute folder or .ini path, not {models!r}")
    source = ["--models-preset", models] if models.endswith(".ini") else ["--models-dir", models]
    argv = [binary, *source, "--models-max", str(int(models_max)), "--host", bind,
            "--port", str(int(port))]
    if not autoload:
        argv.append("--no-models-autoload")
    return [*argv, *args]
