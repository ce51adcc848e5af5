"""Sizing: the one place that turns a service, or a model with engine args, into a request.

`pi start` (admission), `gpumod simulate` and `gpumod model estimate` (CLI, MCP,
TUI) all build their planner request here, so all three read the same facts
(store cache, then the catalog's shipped facts, then the Hub), the same engine
version (``--vllm-version``, else the host's recorded one, else the measured
one), the latest calibration for the setup, and the catalog's quantized
variants as alternatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpumod.errors import GpumodError, UsageError
from gpumod.ops.facts import model_facts
from gpumod.store import calibrations as cal_table
from gpumod.store.db import Store

ENGINES = ("vllm", "llamacpp")


def engine_version(host: Any, engine: str, override: str | None = None) -> str | None:
    """The engine version to plan for: the override, else what the host's setup recorded."""
    if engine != "vllm":
        return None
    if override:
        return override
    env = getattr(host, "engine_env", None) or {}
    version = str(env.get("vllm_version") or "")
    return version if version and version != "none" else None


def card_of(host: Any, gpus: Sequence[int] = ()) -> tuple[str | None, int | None]:
    """(nvidia-smi name, MiB) of the card a service runs on: its first GPU, else the host's."""
    cards = list(getattr(host, "gpus", None) or [])
    if not cards:
        return None, None
    chosen = next((g for g in cards if gpus and g.index == gpus[0]), cards[0])
    return chosen.name, chosen.memory_mib


def calibration(store: Store, *, model: str, engine: str, version: str | None,
                gpu_name: str | None, gpu_mib: int | None,
                args: Sequence[str]) -> dict[str, Any] | None:
    """The latest measurement of this setup (model, engine version, card, memory flags)."""
    from gpumod.planner import calibration as cal_mod

    if gpu_mib is None or engine not in ENGINES:
        return None
    try:
        key = cal_mod.setup_key(engine, args)
    except ValueError as exc:
        raise UsageError(f"invalid engine args: {exc}") from exc
    rows = cal_table.for_setup(store, model=model, engine=engine, args_key=key,
                               gpu_name=cal_mod.gpu_label(gpu_name, gpu_mib))
    return cal_mod.pick_calibration(rows, version)


def request(store: Store, *, name: str, engine: str, args: Sequence[str], facts: Any,
            host: Any = None, gpus: Sequence[int] = (), context: int | None = None,
            version: str | None = None, vram_mib: int | None = None,
            sleep_mode: str = "none", model: str | None = None,
            gpu: tuple[str | None, int | None] | None = None) -> Any:
    """The planner's request for one service: facts, version, calibration, variants.

    `gpu` is the card to look calibrations up for (name, MiB); by default the
    service's first GPU on `host`.
    """
    from gpumod.planner.admission import quantized_variants
    from gpumod.planner.simulate import request_from_args

    ver = engine_version(host, engine, version)
    req = request_from_args(name, engine, args, facts=facts, context=context, gpus=gpus,
                            vram_mib=vram_mib, sleep_mode=sleep_mode, version=ver)
    if facts is None or engine not in ENGINES:
        return req
    gpu_name, gpu_mib = gpu if gpu is not None else card_of(host, gpus)
    req.calibration = calibration(store, model=facts.key, engine=engine, version=ver,
                                  gpu_name=gpu_name, gpu_mib=gpu_mib, args=args)
    if engine == "vllm" and req.calibration and not req.version:
        req.version = req.calibration.get("engine_version") or None
    req.variants = quantized_variants(model or facts.key, engine)
    return req


def service_request(store: Store, spec: Any, *, host: Any = None, facts: Any = None,
                    context: int | None = None, version: str | None = None) -> Any:
    """The request for a defined service (see :func:`request`).

    The version to plan for: `version`, else the one the service was started
    for (`pi start --vllm-version`), else the host's.
    """
    extra = spec.extra if isinstance(spec.extra, dict) else {}
    return request(store, name=spec.name, engine=spec.engine, args=tuple(spec.args),
                   facts=facts, host=host, gpus=tuple(spec.gpus), context=context,
                   version=version or extra.get("vllm_version") or None,
                   vram_mib=spec.vram_mib, sleep_mode=spec.sleep_mode, model=spec.model)


def service_facts(store: Store, spec: Any, host: Any = None, *, hub: Any = None) -> Any:
    """Facts of a service's model as its host sees it (a path on a pod cannot be read)."""
    from gpumod.planner.calibration import model_ref

    ref = spec.model
    if host is not None:
        ref, why = model_ref(spec, host)
        if ref is None:
            raise UsageError(why)
    return model_facts(store, ref, hub=hub)


def estimate(store: Store, model: str, *, engine: str, args: Sequence[str] = (),
             gpu_mib: int, gpu_name: str | None = None, version: str | None = None,
             host: Any = None, refresh: bool = False) -> dict[str, Any]:
    """Per-GPU estimate of MODEL served by ENGINE with engine ARGS, calibrated.

    Returns the estimate's JSON plus ``gpu`` (the card's label) and ``calibration_id``.
    """
    from gpumod.planner.calibration import gpu_label
    from gpumod.planner.placement import estimate_request

    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}", hint="use vllm or llamacpp")
    facts = model_facts(store, model, refresh=refresh)
    req = request(store, name=model, engine=engine, args=tuple(args), facts=facts, host=host,
                  version=version, model=model, gpu=(gpu_name, gpu_mib))
    result = estimate_request(req, gpu_mib=gpu_mib, gpu_name=gpu_name)
    return {**result.to_json(), "gpu": gpu_label(gpu_name, gpu_mib),
            "calibration_id": req.calibration["id"] if req.calibration else None}


def check_start(store: Store, host: Any, spec: Any, usage: list[Any] | None, *,
                force: bool, version: str | None = None) -> Any:
    """Admit `spec` on `host` given the live GPU `usage`, or raise CapacityError.

    `spec.gpus` are the GPUs already picked; `usage` is nvidia-smi's view of the
    host's GPUs (None: no nvidia-smi there). The model's facts are a help, never
    a reason not to start: without them nothing is checked, with a note.
    """
    from gpumod.planner import admission
    from gpumod.planner.placement import gpu_states

    args = tuple(spec.args)
    if usage is None:
        return admission.Admission(args, [f"no VRAM check: no nvidia-smi on {host.name}"])
    if not spec.gpus:
        return admission.Admission(args, ["no VRAM check: no GPU assigned (runs on the CPU)"])
    gpus = gpu_states(usage)
    early = admission.precheck(spec, gpus, host.name, force=force)
    if early is not None:
        return early
    from gpumod.planner.calibration import model_ref

    ref, why = model_ref(spec, host)
    if ref is None:
        return admission.Admission(args, [f"no VRAM check: {why}"])
    try:
        facts = model_facts(store, ref)
    except GpumodError as exc:
        return admission.Admission(args, [f"no VRAM check: no facts for {spec.model}: "
                                          f"{exc.message}"])
    try:
        req = service_request(store, spec, host=host, facts=facts, version=version)
        return admission.admit(spec, gpus, req, force=force)
    except UsageError as exc:
        if not force:
            raise
        return admission.Admission(args, [f"warning: --force: not checked: {exc.message}"])
