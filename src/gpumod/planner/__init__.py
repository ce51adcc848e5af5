"""VRAM planner: model facts, engine memory estimates, placement, simulation, picture.

The planner takes data (model facts, engine args, GPU figures, measurements)
and never a store or a transport; ``gpumod.ops`` gathers the data (``ops.facts``,
``ops.sizing``, ``ops.simulate``, ``ops.calibration``) and calls in.

- ``facts``: ``resolve(model)`` -> ModelFacts (folder, GGUF, catalog, Hub);
  ``facts_from_config(config_json, key=..)``.
- ``estimate``: ``vllm_estimate(facts, gpu_mib=.., gpu_name=.., args=VLLMArgs(tp=.., pp=..))``
  and ``llamacpp_estimate(facts, gpu_mib=.., args=LlamaCppArgs(..))``; the moving parts of
  vLLM's budget per version and card are in ``estimate.vllm_profile``.
- ``placement``: ``place(gpus, [ServiceRequest(..)])`` -> Placement with per-GPU fit and
  engine settings; ``alternatives`` ranks the changes that make a set fit.
- ``simulate``: ``request_from_args(..)`` (the one request builder ``ops.sizing`` uses),
  ``live_usage(..)``, ``simulate_requests(..)``.
- ``admission``: ``precheck(..)`` and ``admit(spec, gpus, request, force=..)`` for `pi start`.
- ``calibration``: ``parse_log(engine, text)``, the keys a measurement is filed under,
  and which measurement applies.
- ``picture``: the one GPU-bar renderer; ``gputable``: known cards.
"""
