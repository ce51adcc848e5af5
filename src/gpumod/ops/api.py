"""The operations the front ends (MCP server, TUI, `gpumod plan`) expose, as JSON.

Each function here is a thin call into the operations layer (`gpumod.ops`,
`gpumod.planner`) that the CLI uses too: open a store, call the operation,
turn its result into JSON-able data. There is no logic of its own here, so
the CLI, the MCP tools, the TUI and the planning agent always agree.

Operations modules are imported when a function is called (`_op`), so that
starting the MCP server or the TUI does not import every layer up front.

Every function opens its own store connection: the MCP server and the TUI run
operations in worker threads, and an SQLite connection belongs to its thread.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from gpumod.errors import UsageError
from gpumod.ops.session import session_store

Progress = Callable[[str], None]


def _op(module: str, name: str) -> Callable[..., Any]:
    """`module.name`, imported on first use."""
    return getattr(importlib.import_module(module), name)


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


def _host_names(store: Any, pod: str | None) -> list[str] | None:
    """[the pod's name] for --pod, else None (every host)."""
    if not pod:
        return None
    from gpumod.ops.hosts import resolve_host

    return [resolve_host(store, pod).name]


def service_list(pod: str | None = None) -> list[dict[str, Any]]:
    """Services with their real state, probed on their hosts (`pi list --json`)."""
    with session_store() as store:
        statuses = _op("gpumod.ops.states", "list_status")(store, _host_names(store, pod))
        return [jsonable(status) for status in statuses]


def service_status(name: str) -> dict[str, Any]:
    """One service: its live state, process, health, whether it sleeps (`gpumod service status`)."""
    with session_store() as store:
        return jsonable(_op("gpumod.ops.states", "service_status")(store, name))


def service_logs(name: str, lines: int = 200) -> str:
    """The last LINES lines of a service's log (`pi logs NAME`)."""
    chunks: list[bytes] = []
    with session_store() as store:
        _op("gpumod.ops.deploy", "logs")(store, name, lines=lines, follow=False,
                                         write=chunks.append)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _progress(progress: Progress | None) -> dict[str, Any]:
    return {} if progress is None else {"progress": progress}


def service_start(name: str, progress: Progress | None = None) -> dict[str, Any]:
    """Start a service (dependencies first), each healthy (`gpumod service start`)."""
    with session_store() as store:
        started = _op("gpumod.ops.lifecycle", "start_service")(store, name,
                                                               **_progress(progress))
        return {"service": name, "started": jsonable(started)}


def service_stop(name: str, progress: Progress | None = None) -> dict[str, Any]:
    """Stop a service (its dependents first) (`gpumod service stop`)."""
    with session_store() as store:
        stopped = _op("gpumod.ops.lifecycle", "stop_service")(store, name,
                                                              **_progress(progress))
        return {"service": name, "stopped": jsonable(stopped)}


def _report(report: Any) -> dict[str, Any]:
    if not getattr(report, "ok", True):
        from gpumod.errors import EngineError

        raise EngineError(report.summary())
    return jsonable(report)


def service_sleep(name: str, level: str | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Put a service to sleep (`gpumod service sleep`); a failed sleep raises."""
    with session_store() as store:
        return _report(_op("gpumod.ops.lifecycle", "sleep")(store, name, level,
                                                                **_progress(progress)))


def service_wake(name: str, progress: Progress | None = None) -> dict[str, Any]:
    """Wake a sleeping service (`gpumod service wake`); a failed wake raises."""
    with session_store() as store:
        return _report(_op("gpumod.ops.lifecycle", "wake")(store, name,
                                                               **_progress(progress)))


# --------------------------------------------------------------------------- gateway


def gateway_status(pod: str | None = None) -> dict[str, Any]:
    """The host's gateway: URL, state, and each model's state, idle time and TTL."""
    with session_store() as store:
        return jsonable(_op("gpumod.ops.gateway", "status")(store, pod))


# --------------------------------------------------------------------------- modes


def mode_list(pod: str | None = None) -> list[dict[str, Any]]:
    """Modes of a host (--pod, else the active one), as `gpumod mode list --json`."""
    with session_store() as store:
        from gpumod.ops.hosts import resolve_host

        host = resolve_host(store, pod).name
        modes = _op("gpumod.ops.modes", "list_modes")(store, host)
        current = _op("gpumod.ops.modes", "current_mode")(store, host)
        return [{**jsonable(m), "current": m.name == current} for m in modes]


def mode_status(pod: str | None = None) -> dict[str, Any]:
    with session_store() as store:
        from gpumod.ops.hosts import resolve_host

        host = resolve_host(store, pod).name
        return jsonable(_op("gpumod.ops.mode_status", "mode_status")(store, host))


def mode_verify(mode: str) -> dict[str, Any]:
    """Is every service of MODE running and healthy? Lists those that are not."""
    with session_store() as store:
        return jsonable(_op("gpumod.ops.mode_status", "verify_mode")(store, mode))


def mode_switch(mode: str, progress: Progress | None = None) -> dict[str, Any]:
    """Switch the mode's host to MODE; a failure rolls back and raises (`gpumod mode switch`)."""
    with session_store() as store:
        return jsonable(_op("gpumod.ops.modes", "switch_mode")(store, mode,
                                                               **_progress(progress)))


# --------------------------------------------------------------------------- planner


def simulate_mode(mode: str | None = None, add: Sequence[str] = (),
                  remove: Sequence[str] = (), contexts: dict[str, int] | None = None,
                  pod: str | None = None, vllm_version: str | None = None) -> dict[str, Any]:
    """Would MODE (plus/minus services, with these contexts) fit? Nothing is changed."""
    if not mode and not add:
        raise UsageError("nothing to simulate", hint="give a mode, or services to add")
    with session_store() as store:
        from gpumod.ops.inventory import target_host

        simulate = _op("gpumod.ops.simulate", "simulate")
        # A mode names its host; --pod (or, without a mode, the active host) otherwise.
        host = target_host(store, pod, mode=mode).name
        # Live GPU use, as `gpumod simulate` (falls back to the inventory when unreachable).
        result = simulate(store, host=host, mode=mode or None, add=list(add),
                          remove=list(remove), contexts=dict(contexts or {}), live=True,
                          version=vllm_version)
        out = jsonable(result)
        out["picture"] = _op("gpumod.ops.simulate", "picture")(result)
        return out


def model_info(model: str, ollama_url: str | None = None,
               refresh: bool = False) -> dict[str, Any]:
    """Facts of a model (a Hugging Face id, a folder or a .gguf file) and its calibrations."""
    with session_store() as store:
        info = _op("gpumod.ops.facts", "model_info")(store, model, ollama_url=ollama_url,
                                                      refresh=refresh)
        return {**info["facts"], "calibrations": info["calibrations"]}


def model_search(query: str, limit: int = 20) -> list[dict[str, Any]]:
    """Models on the Hugging Face Hub matching QUERY, most downloaded first."""
    return _op("gpumod.ops.facts", "search_models")(query, limit)


def model_estimate(model: str, engine: str = "vllm", context: int | None = None,
                   gpu: str | None = None, args: Sequence[str] = (),
                   pod: str | None = None, gpu_mib: int | None = None,
                   vllm_version: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Per-GPU VRAM estimate for serving MODEL with ENGINE and these engine args.

    The card: GPU type GPU (or GPU_MIB MiB), else the first GPU of --pod (or the
    active host), else an H100 80GB. The vLLM version: VLLM_VERSION, else the
    host's recorded one. The same request `pi start` admits with (ops.sizing).
    """
    from gpumod.planner import gputable

    if engine not in ("vllm", "llamacpp"):
        raise UsageError(f"unknown engine {engine!r}", hint="use vllm or llamacpp")
    if gpu and gpu_mib:
        raise UsageError("give --gpu or --gpu-mib, not both")
    argv = list(args)
    if context is not None:
        argv += ["--max-model-len" if engine == "vllm" else "-c", str(context)]
    with session_store() as store:
        from gpumod.ops.inventory import target_host

        host = target_host(store, pod)
        if gpu_mib:
            if gpu_mib < 1024:
                raise UsageError(f"--gpu-mib {gpu_mib} is too small", hint="MiB, e.g. 81559")
            mib, name = gpu_mib, None
        elif gpu:
            known = gputable.lookup(gpu)
            mib, name = gputable.gpu_mib(gpu), known.name if known else gpu
        elif host.gpus:
            mib, name = host.gpus[0].memory_mib, host.gpus[0].name
        else:
            mib, name = gputable.gpu_mib("H100 80GB"), "H100 80GB"
        return _op("gpumod.ops.sizing", "estimate")(
            store, model, engine=engine, args=argv, gpu_mib=mib, gpu_name=name,
            version=vllm_version, host=host, refresh=refresh)
