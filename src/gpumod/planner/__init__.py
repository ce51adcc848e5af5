"""VRAM planner: model facts, engine memory estimates, placement, simulation, picture.

Entry points other modules call:

- ``facts.resolve(model, store=..)`` -> ModelFacts
- ``estimate.vllm_estimate(facts, gpu_mib=.., args=VLLMArgs(..))`` and
  ``estimate.llamacpp_estimate(facts, gpu_mib=.., args=LlamaCppArgs(..))``
- ``placement.plan_start(gpus_usage, ServiceRequest(..))`` -> Placement (raises CapacityError)
- ``simulate.simulate(store, host=.., mode=..)`` and ``picture.render_gpu_bars(..)``
- ``calibration.parse_log(engine, text)`` and ``calibration.record_calibration(store, ..)``
"""
