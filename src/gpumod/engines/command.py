"""Any OpenAI-compatible server started by a command with a `{port}` placeholder.

For FastAPI-style services: `pi start my-embedder --name emb --engine command
--vllm python -m my_server --port {port}`. Placeholders: {port}, {host} (the
bind address), {model}. The API key reaches the command as PI_API_KEY and
API_KEY in its environment.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from gpumod.engines.base import Engine, HealthCheck
from gpumod.errors import UsageError
from gpumod.spec import ServiceSpec

PLACEHOLDERS = ("port", "host", "model")


class CommandEngine(Engine):
    name = "command"
    binary = ""
    secret_env = "API_KEY"  # noqa: S105 - a variable name, not a value
    health = HealthCheck("/health", ok_codes=(200,), loading_codes=(503,))
    owned_flags = ()

    def argv(self, spec: ServiceSpec, *, bind: str, model_path: str | None = None,
             binary: str | None = None) -> list[str]:
        self.validate(spec)
        values = {"port": str(spec.port), "host": bind, "model": model_path or spec.model}
        return [_fill(arg, values) for arg in spec.args]

    def secret_env_for(self, api_key: str) -> dict[str, str]:
        return {"API_KEY": api_key, "PI_API_KEY": api_key}

    def validate(self, spec: ServiceSpec) -> None:
        if not spec.args:
            raise UsageError("the command engine needs the server command",
                             hint="pass it after --vllm, e.g. --vllm python -m srv --port {port}")
        if not any("{port}" in arg for arg in spec.args):
            raise UsageError(f"the command has no {{port}} placeholder: {shlex.join(spec.args)}",
                             hint="gpumod picks the port; put {port} where the server takes it")
        for arg in spec.args:
            _fill(arg, {k: "x" for k in PLACEHOLDERS})

    def gpu_count(self, args: Sequence[str]) -> int:
        return 1


def _fill(arg: str, values: dict[str, str]) -> str:
    try:
        return arg.format_map(values)
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"bad placeholder in command argument {arg!r}: {exc}",
                         hint="only {port}, {host} and {model} are filled in; "
                              "write {{ and }} for literal braces") from None
