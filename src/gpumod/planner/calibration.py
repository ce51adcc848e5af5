"""Learn from what engines report: parse memory lines from logs, store estimate vs actual.

The latest measurement for the same (model, engine, engine version, GPU,
setup args) replaces the estimated weights/activation/overheads in the next
estimate (see ``estimate.vllm_estimate(calibration=...)``).
"""

from __future__ import annotations

import re
from typing import Any

from gpumod.store.db import Store, dumps, loads

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


def record_calibration(store: Store, *, model: str, engine: str, engine_version: str = "",
                       gpu_name: str = "", args_key: str = "", estimate: dict[str, Any],
                       actual: dict[str, Any], process_mib: int | None = None) -> int:
    """Store one estimate-vs-actual pair; returns its id.

    `actual` is what ``parse_log`` returned (plus anything else measured);
    `process_mib` is the engine process's use from nvidia-smi, when known.
    """
    actual = dict(actual)
    if process_mib is not None:
        actual["process_mib"] = int(process_mib)
    with store.transaction() as db:
        cur = db.execute(
            "INSERT INTO calibrations (model, engine, engine_version, gpu_name, args_key, "
            "estimate, actual) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model, engine, engine_version or "", gpu_name or "", args_key or "",
             dumps(estimate), dumps(actual)))
        return int(cur.lastrowid or 0)


def latest_calibration(store: Store, *, model: str, engine: str, engine_version: str = "",
                       gpu_name: str = "", args_key: str = "") -> dict[str, Any] | None:
    row = store.query_one(
        "SELECT * FROM calibrations WHERE model = ? AND engine = ? AND engine_version = ? "
        "AND gpu_name = ? AND args_key = ? ORDER BY id DESC LIMIT 1",
        (model, engine, engine_version or "", gpu_name or "", args_key or ""))
    return _row(row) if row else None


def calibrations_for(store: Store, model: str, limit: int = 20) -> list[dict[str, Any]]:
    rows = store.query("SELECT * FROM calibrations WHERE model = ? ORDER BY id DESC LIMIT ?",
                       (model, limit))
    return [_row(r) for r in rows]


def _row(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "model": row["model"], "engine": row["engine"],
            "engine_version": row["engine_version"], "gpu_name": row["gpu_name"],
            "args_key": row["args_key"], "estimate": loads(row["estimate"], {}),
            "actual": loads(row["actual"], {}), "created_at": row["created_at"]}
