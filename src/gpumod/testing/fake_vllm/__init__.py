"""A fake vLLM OpenAI-compatible server, faithful to the real CLI, endpoints and log lines.

Run as ``python -m gpumod.testing.fake_vllm serve MODEL [flags]`` (same shape as
``vllm serve MODEL ...``). It holds no real memory: it registers ``util × total`` MiB per GPU
in the fake nvidia-smi state (``GPUMOD_FAKE_GPU_STATE``) and removes it on exit.

Environment (besides the real ones: ``VLLM_API_KEY``, ``VLLM_SERVER_DEV_MODE``,
``CUDA_VISIBLE_DEVICES``):

- ``FAKE_VLLM_STARTUP_SECONDS`` (0.5): "model loading" time before the port opens.
- ``FAKE_VLLM_WEIGHTS_GIB`` (1.0): total weights; each GPU holds weights / (tp × pp).
- ``FAKE_VLLM_OVERHEAD_GIB`` (1.0): activation peak + non-torch memory per GPU.
- ``FAKE_VLLM_GRAPH_GIB`` (0.25): CUDA graph memory per GPU (none with --enforce-eager).
- ``FAKE_VLLM_KV_BYTES_PER_TOKEN`` (131072): KV bytes per token for the whole model
  (bf16; halved for fp8 --kv-cache-dtype; divided by tp × pp per GPU).
- ``FAKE_VLLM_MAX_MODEL_LEN`` (32768): the model's native context (when no --max-model-len).
- ``FAKE_VLLM_SLEEP_RESIDUAL_MIB`` (512): what a GPU still shows while asleep (CUDA context).
- ``FAKE_VLLM_SLEEP_KEEPS_MEMORY=1``: sleep answers 200 but frees nothing (a buggy engine).
- ``FAKE_VLLM_FAIL="msg"``: fail during startup with a traceback ending in ``msg``, exit 1.
- ``FAKE_VLLM_IGNORE_TERM=1``: ignore SIGTERM (to test KILL escalation).
- ``FAKE_VLLM_SCRIPT=path``: JSON list of turns ``{"reasoning", "content", "tool_calls":
  [{"name", "arguments"}]}``; the n-th chat request gets the n-th turn (the last repeats).
- ``FAKE_VLLM_TOKEN_DELAY`` (0): seconds between streamed chunks.
- ``FAKE_VLLM_VERSION`` (0.11.0): what ``vllm --version`` and the logs say.

Modules: ``args`` (the command line), ``engine`` (startup and state), ``app`` (HTTP),
``replies`` (what the model says), ``ray_cluster`` (the Ray executor backend),
``cli`` (the process), ``common`` (shared knobs and log lines).
"""

from gpumod.testing.fake_vllm.cli import main

__all__ = ["main"]
