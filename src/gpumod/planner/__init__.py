"""VRAM planner: model facts, engine memory estimates, placement, simulation, picture.

Entry points other modules call:

- ``facts.resolve(model, store=..)`` -> ModelFacts
- ``estimate.vllm_estimate(facts, gpu_mib=.., args=VLLMArgs(..))`` and
  ``estimate.llamacpp_estimate(facts, gpu_mib=.., args=LlamaCppArgs(..))``
- ``placement.plan_start(gpus_usage, ServiceRequest(..))`` -> Placement (raises CapacityError)
- ``simulate.simulate(store, host=.., mode=..)`` and ``picture.render_gpu_bars(..)``
- ``calibration.parse_log(engine, text)`` and ``calibration.record_calibration(store, ..)``
- ``check_start(store, host, spec, usage, force=..)`` -> Admission (the start path's VRAM gate)
- ``calibration.after_start(store, spec, host, log_text, process_mib)`` (never raises)
- ``estimate_for(store, facts, engine=.., args=.., gpu_mib=.., gpu_name=..)``: the calibrated
  estimate `gpumod model estimate` and the MCP tool `model_estimate` both return
"""

from typing import Any

__all__ = ["check_start", "estimate_for"]


def __getattr__(name: str) -> Any:   # lazy: importing a submodule stays cheap
    if name == "check_start":
        from gpumod.planner.admission import check_start

        return check_start
    if name == "estimate_for":
        from gpumod.planner.calibration import estimate_for

        return estimate_for
    raise AttributeError(name)
