"""After a healthy start: file what the engine reported next to what was estimated.

The next estimate for the same setup (model, engine version, card, memory flags)
uses the measured weights, activation and overheads instead of the estimated
ones (see ``gpumod.ops.sizing.calibration``).
"""

from __future__ import annotations

import logging
from typing import Any

from gpumod.errors import GpumodError
from gpumod.store import calibrations as cal_table
from gpumod.store.db import Store

log = logging.getLogger(__name__)


def after_start(store: Store, spec: Any, host: Any, log_text: str,
                process_mib: int | None = None, *,
                estimate: dict[str, Any] | None = None) -> None:
    """Record what a healthy engine reported about its memory. Never raises.

    `spec` is the ServiceSpec as started (its args are the admitted args),
    `host` the Host, `log_text` the engine's log, `process_mib` its nvidia-smi
    use per GPU when known, `estimate` the admission's estimate when the caller
    kept it (else the planner's estimate for these args is made again).
    """
    try:
        record(store, spec, host, log_text, process_mib, estimate)
    except Exception as exc:  # a start must not fail on its bookkeeping: report what broke
        log.warning("calibration of %s failed: %s: %s", getattr(spec, "name", "?"),
                    type(exc).__name__, exc)
        store.log_event("calibration-failed", host=getattr(host, "name", None),
                        service=getattr(spec, "name", None),
                        detail=f"{type(exc).__name__}: {exc}")


def record(store: Store, spec: Any, host: Any, log_text: str, process_mib: int | None,
           estimate: dict[str, Any] | None) -> int | None:
    """File the measurement of this start; the new row's id (None: nothing to file)."""
    from gpumod.ops import sizing
    from gpumod.planner import calibration as cal_mod

    if spec.engine not in sizing.ENGINES or not spec.gpus:
        return None
    actual = cal_mod.parse_log(spec.engine, log_text or "")
    if not actual:
        return None
    gpu = next((g for g in host.gpus if g.index == spec.gpus[0]), None)
    if gpu is None:
        return None
    # the engine's own banner says what ran; the host record may predate an upgrade
    version = actual.get("engine_version") or sizing.engine_version(host, spec.engine) or ""
    facts = None
    try:
        facts = sizing.service_facts(store, spec, host)
    except GpumodError as exc:
        log.info("calibration of %s: no facts for %s (%s)", spec.name, spec.model, exc.message)
    if estimate is None and facts is not None:
        estimate = sizing.estimate(store, facts.key, engine=spec.engine, args=spec.args,
                                   gpu_mib=gpu.memory_mib, gpu_name=gpu.name, host=host)
    if spec.engine == "vllm":
        cal_mod.derive_overheads(actual, spec.args, gpu.memory_mib, version, estimate or {},
                                 gpu_name=gpu.name)
    if process_mib is not None:
        actual["process_mib"] = int(process_mib)
    return cal_table.record(
        store, model=facts.key if facts is not None else spec.model, engine=spec.engine,
        engine_version=version, gpu_name=cal_mod.gpu_label(gpu.name, gpu.memory_mib),
        args_key=cal_mod.setup_key(spec.engine, spec.args), estimate=estimate or {},
        actual=actual)


def calibrations_for(store: Store, model: str, limit: int = 20) -> list[dict[str, Any]]:
    """The latest measurements filed for MODEL (newest first)."""
    return cal_table.for_model(store, model, limit)
