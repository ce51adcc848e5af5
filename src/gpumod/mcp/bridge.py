"""The operations the front ends (MCP server, TUI, `gpumod plan`) expose, as JSON.

Each function here is a thin call into the operations layer (`gpumod.ops`,
`gpumod.planner`) that the CLI uses too: open a store, call the operation,
turn its result into JSON-able data. There is no logic of its own here, so
the CLI, the MCP tools, the TUI and the planning agent always agree.

Operations are looked up when they are called (`_op`): a front end keeps
working, with a clear `NotAvailable` error for that one operation, when the
operations module behind it is missing from this build.

Every function opens its own store connection: the MCP server and the TUI run
operations in worker threads, and an SQLite connection belongs to its thread.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from gpumod.errors import ConfigError, GpumodError, UsageError


class NotAvailable(ConfigError):
    """The operation behind a tool or command is not part of this build."""


def _op(module: str, name: str) -> Callable[..., Any]:
    """`module.name`, imported now; NotAvailable when this build lacks it."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise NotAvailable(f"{module}.{name} is not available in this build",
                               hint="update gpumod; this operation has not landed yet") from exc
        raise
    fn = getattr(mod, name, None)
    if fn is None:
        raise NotAvailable(f"{module}.{name} is not available in this build",
                           hint="update gpumod; this operation has not landed yet")
    return fn


@contextmanager
def session_store() -> Iterator[Any]:
    """A store connection for this call (and this thread), closed afterwards."""
    from gpumod import paths
    from gpumod.store.db import Store

    paths.ensure_home()
    store = Store(paths.database_path())
    try:
        yield store
    finally:
        store.close()


def jsonable(value: Any) -> Any:
    """Results of ops as JSON data: `to_json()` when there is one, else dataclass fields."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return jsonable(to_json())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def error_json(exc: GpumodError) -> dict[str, Any]:
    out: dict[str, Any] = {"error": exc.message, "kind": type(exc).__name__}
    if exc.hint:
        out["hint"] = exc.hint
    return out


def error_text(exc: GpumodError) -> str:
    """One line, then the hint: what the CLI's error boundary prints."""
    return exc.message + (f"\nhint: {exc.hint}" if exc.hint else "")


# --------------------------------------------------------------------------- hosts, GPUs


def host_list() -> list[dict[str, Any]]:
    with session_store() as store:
        from gpumod.ops.hosts import active_host_name, list_hosts

        active = active_host_name(store)
        return [{**h.to_json(), "active": h.name == active} for h in list_hosts(store)]


def gpu_status(pod: str | None = None) -> dict[str, Any]:
    """GPUs, memory and GPU processes of a host (`gpumod status --json`)."""
    with session_store() as store:
        from gpumod.ops.status import host_status

        return jsonable(host_status(store, pod))


def gpu_picture(pod: str | None = None) -> str:
    """The ASCII VRAM picture of a host (`gpumod status --visual`)."""
    with session_store() as store:
        from gpumod.ops.status import host_status, render_visual

        return render_visual(host_status(store, pod))


# --------------------------------------------------------------------------- services


def service_list(pod: str | None = None) -> list[dict[str, Any]]:
    """Services with their real state (`gpumod list --json`)."""
    with session_store() as store:
        return jsonable(_op("gpumod.ops.deploy", "list_deployments")(store, pod))


def service_status(name: str) -> dict[str, Any]:
    with session_store() as store:
        return jsonable(_op("gpumod.ops.deploy", "deployment_status")(store, name))


def service_logs(name: str, lines: int = 200) -> str:
    with session_store() as store:
        return str(_op("gpumod.ops.deploy", "read_log")(store, name, lines=lines))


def service_start(name: str) -> dict[str, Any]:
    with session_store() as store:
        return jsonable(_op("gpumod.ops.lifecycle", "start_service")(store, name))


def service_stop(name: str) -> dict[str, Any]:
    with session_store() as store:
        return jsonable(_op("gpumod.ops.lifecycle", "stop_service")(store, name))


def service_sleep(name: str, level: str | None = None) -> dict[str, Any]:
    with session_store() as store:
        return jsonable(_op("gpumod.ops.sleep", "sleep_service")(store, name, level=level))


def service_wake(name: str) -> dict[str, Any]:
    with session_store() as store:
        return jsonable(_op("gpumod.ops.sleep", "wake_service")(store, name))


# --------------------------------------------------------------------------- modes


def mode_list(pod: str | None = None) -> list[dict[str, Any]]:
    with session_store() as store:
        return jsonable(_op("gpumod.ops.modes", "list_modes")(store, pod))


def mode_status(pod: str | None = None) -> dict[str, Any]:
    with session_store() as store:
        return jsonable(_op("gpumod.ops.modes", "mode_status")(store, pod))


def mode_verify(mode: str) -> dict[str, Any]:
    with session_store() as store:
        return jsonable(_op("gpumod.ops.modes", "verify_mode")(store, mode))


def mode_switch(mode: str) -> dict[str, Any]:
    with session_store() as store:
        return jsonable(_op("gpumod.ops.modes", "switch_mode")(store, mode))


# --------------------------------------------------------------------------- planner


def simulate_mode(mode: str | None = None, add: Sequence[str] = (),
                  remove: Sequence[str] = (), contexts: dict[str, int] | None = None,
                  pod: str | None = None) -> dict[str, Any]:
    """Would MODE (plus/minus services, with these contexts) fit? Nothing is changed."""
    if not mode and not add:
        raise UsageError("nothing to simulate", hint="give a mode, or services to add")
    with session_store() as store:
        from gpumod.ops.hosts import resolve_host

        simulate = _op("gpumod.planner.simulate", "simulate")
        # A mode names its host; --pod (or, without a mode, the active host) otherwise.
        host = resolve_host(store, pod).name if pod or not mode else ""
        result = simulate(store, host=host, mode=mode or None, add=list(add),
                          remove=list(remove), contexts=dict(contexts or {}))
        out = jsonable(result)
        bars = getattr(result, "bars", None)
        if callable(bars):
            out["picture"] = _op("gpumod.planner.picture", "render_gpu_bars")(bars())
        return out


def model_info(model: str) -> dict[str, Any]:
    """Facts of a model: a Hugging Face id, a folder or a .gguf file."""
    with session_store() as store:
        from gpumod.planner.facts import resolve

        return resolve(model, store=store).summary()


def model_estimate(model: str, engine: str = "vllm", context: int | None = None,
                   gpu: str | None = None, args: Sequence[str] = (),
                   pod: str | None = None) -> dict[str, Any]:
    """Per-GPU VRAM estimate for serving MODEL with ENGINE (`gpumod model estimate`)."""
    with session_store() as store:
        fn = _op("gpumod.planner.estimate", "estimate_model")
        return jsonable(fn(store, model, engine=engine, context=context, gpu=gpu,
                           args=list(args), pod=pod))
