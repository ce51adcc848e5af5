"""Learn from what engines report: parse memory lines from logs, key the measurement.

The latest measurement for the same (model, engine, engine version, GPU,
setup args) replaces the estimated weights/activation/overheads in the next
estimate (see ``estimate.vllm_estimate(calibration=...)``). Storing and finding
measurements is the store's and the operations layer's job
(``gpumod.store.calibrations``, ``gpumod.ops.calibration``); this module only reads
logs and makes the keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_NUM = r"([0-9]+(?:\.[0-9]+)?)"

VLLM_PATTERNS: dict[str, re.Pattern[str]] = {
    "weights_gib": re.compile(rf"Model loading took {_NUM} ?GiB"),
    "weights_gb_old": re.compile(rf"Loading model weights took {_NUM} ?GB"),
    "kv_cache_gib": re.compile(rf"Available KV cache memory: {_NUM} ?GiB"),
    "kv_tokens": re.compile(r"GPU KV cache size: ([0-9,]+) tokens"),
    "max_concurrency": re.compile(rf"Maximum concurrency for [0-9,]+ tokens per request: {_NUM}x"),
    "cuda_graph_gib": re.compile(rf"Graph capturing finished in [0-9.]+ secs?, took {_NUM} ?GiB"),
    "activation_gib": re.compile(rf"torch peak memory increase: {_NUM} ?GiB"),
    "non_torch_gib": re.compile(rf"non-torch forward increase memory: {_NUM} ?GiB"),
    # vLLM 0.19's summary line
    "summary": re.compile(rf"Actual usage is {_NUM} GiB for weight, {_NUM} GiB for peak "
                          rf"activation, {_NUM} GiB for non-torch memory"),
    "version": re.compile(r"Initializing a V1 LLM engine \(v([0-9][^)]*)\)"),
    "old_activation": re.compile(rf"PyTorch activation peak memory takes {_NUM} ?GiB"),
    "old_non_torch": re.compile(rf"non_torch_memory takes {_NUM} ?GiB"),
}

LLAMA_PATTERNS: dict[str, re.Pattern[str]] = {
    "weights_mib": re.compile(rf"CUDA0 model buffer size = +{_NUM} MiB"),
    "kv_cache_mib": re.compile(rf"llama_kv_cache(?:_unified)?: +(?:CUDA0 KV buffer )?size = +"
                               rf"{_NUM} MiB"),
    "kv_buffer_mib": re.compile(rf"CUDA0 KV buffer size = +{_NUM} MiB"),
    "compute_mib": re.compile(rf"CUDA0 compute buffer size = +{_NUM} MiB"),
}


def parse_vllm_log(text: str) -> dict[str, Any]:
    """Memory figures a vLLM start wrote (first rank's lines). Missing ones are absent."""
    out: dict[str, Any] = {}
    for key, pattern in VLLM_PATTERNS.items():
        m = pattern.search(text)
        if not m:
            continue
        if key == "summary":
            out.setdefault("weights_gib", float(m.group(1)))
            out.setdefault("activation_gib", float(m.group(2)))
            out.setdefault("non_torch_gib", float(m.group(3)))
        elif key == "weights_gb_old":
            out.setdefault("weights_gib", float(m.group(1)))
        elif key == "old_activation":
            out.setdefault("activation_gib", float(m.group(1)))
        elif key == "old_non_torch":
            out.setdefault("non_torch_gib", float(m.group(1)))
        elif key == "kv_tokens":
            out[key] = int(m.group(1).replace(",", ""))
        elif key == "version":
            out["engine_version"] = m.group(1)
        else:
            out.setdefault(key, float(m.group(1)))
    return out


def parse_llamacpp_log(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    weights = [float(x) for x in LLAMA_PATTERNS["weights_mib"].findall(text)]
    if weights:
        out["weights_gib"] = round(sum(weights) / 1024, 3)
    kv = LLAMA_PATTERNS["kv_cache_mib"].search(text)
    if kv:
        out["kv_cache_gib"] = round(float(kv.group(1)) / 1024, 3)
    else:
        buffers = [float(x) for x in LLAMA_PATTERNS["kv_buffer_mib"].findall(text)]
        if buffers:
            out["kv_cache_gib"] = round(sum(buffers) / 1024, 3)
    compute = LLAMA_PATTERNS["compute_mib"].findall(text)
    if compute:
        out["compute_gib"] = round(float(compute[-1]) / 1024, 3)
    return out


def parse_log(engine: str, text: str) -> dict[str, Any]:
    return parse_vllm_log(text) if engine == "vllm" else parse_llamacpp_log(text)


# ---------------------------------------------------------------------------
# The keys a measurement is filed under, and which filed measurement applies
# ---------------------------------------------------------------------------

def setup_key(engine: str, argv: Sequence[str]) -> str:
    """What decides weights/activation/overheads for these engine args (not util nor context)."""
    from gpumod.planner import estimate as est

    if engine == "vllm":
        return est.parse_vllm_args(list(argv)).setup_key()
    largs = est.parse_llamacpp_args(list(argv))
    return f"ngl={largs.n_gpu_layers};ctk={largs.cache_type_k};ctv={largs.cache_type_v}"


def gpu_label(name: str | None, mib: int) -> str:
    """The GPU part of the key: 'H100 80GB' for 'NVIDIA H100 80GB HBM3', 'h100' or 81559 MiB."""
    from gpumod.planner import gputable

    if name:
        return gputable.display_name(name, mib)
    for model in gputable.GPU_MODELS:
        if model.smi_mib == mib:
            return model.name
    return gputable.display_name("GPU", mib)


def pick_calibration(rows: Sequence[dict[str, Any]], engine_version: str | None
                     ) -> dict[str, Any] | None:
    """The measurement to use from `rows` (newest first, one setup): of this engine version.

    With an engine version, only a measurement of that version (same major.minor)
    counts; without one (an estimate for "whatever runs there"), the latest of any.
    """
    from gpumod.planner.estimate import version_tuple

    for row in rows:
        version = row.get("engine_version") or ""
        if not engine_version or version == engine_version or (
                version and version_tuple(version) == version_tuple(engine_version)):
            return row
    return None


def model_ref(spec: Any, host: Any) -> tuple[str | None, str]:
    """What to read the model's facts from for a service on `host`, or None and why not.

    A path is only readable when the host is this machine; a llama.cpp model
    fetched from a GGUF repository is read from the file it was downloaded to.
    """
    model = spec.model
    path_like = model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf")
    if not host.is_local and path_like:
        return None, f"{model} is a path on {host.name}, which cannot be read from here"
    extra = spec.extra if isinstance(spec.extra, dict) else {}
    if spec.engine == "llamacpp" and host.is_local and extra.get("model_path"):
        return str(extra["model_path"]), ""
    return model, ""


# ---------------------------------------------------------------------------
# After a start: what the engine reported, as a measurement to file
# ---------------------------------------------------------------------------

def derive_overheads(actual: dict[str, Any], argv: Sequence[str], gpu_mib: int, version: str,
                     estimate: dict[str, Any], gpu_name: str | None = None) -> None:
    """Fill activation/non-torch from the budget when vLLM logged only weights and KV.

    At INFO level vLLM writes `Model loading took` and `Available KV cache memory`
    but not the profile split; the budget (utilization x CUDA total) minus those two
    is what the activation peak and non-torch memory took, so the next estimate
    reproduces the measured KV pool. Marked in ``derived``.
    """
    from gpumod.planner import estimate as est
    from gpumod.planner.gputable import card

    missing = [k for k in ("activation_gib", "non_torch_gib") if k not in actual]
    if not missing or "weights_gib" not in actual or "kv_cache_gib" not in actual:
        return
    vargs = est.parse_vllm_args(list(argv))
    if vargs.kv_cache_memory_bytes:
        return                              # a pinned pool says nothing about the rest
    util = vargs.gpu_memory_utilization or est.default_utilization(version or None)
    gpu = card(gpu_name, gpu_mib)
    budget = util * gpu.usable_mib / 1024
    graphs = actual.get("cuda_graph_gib", estimate.get("cuda_graph_gib", 0.0)) \
        if est.version_tuple(version or None) >= (0, 21) else 0.0
    overhead = budget - float(actual["weights_gib"]) - float(actual["kv_cache_gib"]) - graphs
    non_torch = actual.get("non_torch_gib")
    if non_torch is None:
        non_torch = estimate.get("non_torch_gib")
        if non_torch is None:
            non_torch = est.non_torch_bytes(tp=vargs.tp, pp=vargs.pp, version=version or None,
                                            card=gpu) / 2**30
    activation = actual.get("activation_gib", overhead - float(non_torch))
    if activation < 0:
        return                              # the log does not match this budget: keep it raw
    actual.setdefault("non_torch_gib", round(float(non_torch), 3))
    actual.setdefault("activation_gib", round(float(activation), 3))
    actual["derived"] = missing
