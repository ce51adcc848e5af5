"""Estimate accuracy against real vLLM start-up measurements.

Reads bench/estimate_measurements.csv (every row cites the public log or
report it comes from), estimates each run from the model's config.json
(tests/fixtures/planner/configs) with gpumod's planner, and prints the median
and worst absolute percentage error of per-GPU weights and KV pool (and KV
tokens where the source gives them).

    .venv/bin/python bench/estimate_accuracy.py [--json]
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gpumod.planner.estimate import VLLMArgs, vllm_estimate  # noqa: E402
from gpumod.planner.facts import facts_from_config  # noqa: E402
from gpumod.planner.gputable import gpu_mib  # noqa: E402

TABLE = Path(__file__).with_name("estimate_measurements.csv")
CONFIGS = ROOT / "tests" / "fixtures" / "planner" / "configs"


def pct(estimate: float, actual: float) -> float:
    return (estimate - actual) / actual * 100


def run() -> dict:
    rows = []
    with TABLE.open() as fh:
        for r in csv.DictReader(fh):
            cfg = json.loads((CONFIGS / f"{r['config']}.json").read_text())
            facts = facts_from_config(cfg, key=r["model"])
            args = VLLMArgs(tp=int(r["tp"]),
                            gpu_memory_utilization=float(r["gpu_memory_utilization"]),
                            max_model_len=int(r["max_model_len"]),
                            kv_cache_dtype=r["kv_cache_dtype"], version=r["engine_version"])
            e = vllm_estimate(facts, gpu_mib=gpu_mib(r["gpu"]), args=args)
            row = {"model": r["model"], "tp": int(r["tp"]), "version": r["engine_version"],
                   "kv_dtype": r["kv_cache_dtype"],
                   "weights": (e.weights_gib, float(r["actual_weights_gib"])),
                   "kv": (e.kv_cache_gib, float(r["actual_kv_gib"])),
                   "tokens": ((e.kv_tokens, int(r["actual_kv_tokens"]))
                              if r["actual_kv_tokens"] else None)}
            rows.append(row)
    summary = {}
    for key in ("weights", "kv", "tokens"):
        errs = [abs(pct(*row[key])) for row in rows if row[key]]
        summary[key] = {"n": len(errs), "median_abs_pct": round(statistics.median(errs), 2),
                        "worst_abs_pct": round(max(errs), 2),
                        "mean_abs_pct": round(statistics.mean(errs), 2)}
    return {"rows": rows, "summary": summary}


def main() -> None:
    result = run()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
        return
    print(f"{'model':46} {'tp':>2} {'vllm':>6} {'kv':>4} {'weights est/act (err%)':>26} "
          f"{'KV pool est/act (err%)':>26} {'tokens err%':>11}")
    for r in result["rows"]:
        w, k, t = r["weights"], r["kv"], r["tokens"]
        tok = f"{pct(*t):+.1f}" if t else "-"
        print(f"{r['model'][:46]:46} {r['tp']:>2} {r['version']:>6} {r['kv_dtype']:>4} "
              f"{w[0]:7.2f}/{w[1]:7.2f} ({pct(*w):+5.1f}%)    "
              f"{k[0]:7.2f}/{k[1]:7.2f} ({pct(*k):+5.1f}%)    {tok:>9}")
    for key, label in (("weights", "weights per GPU"), ("kv", "KV pool per GPU"),
                       ("tokens", "KV tokens")):
        s = result["summary"][key]
        print(f"{label:16}: median |err| {s['median_abs_pct']:.2f}%, worst {s['worst_abs_pct']:.2f}%,"
              f" mean {s['mean_abs_pct']:.2f}% (n={s['n']})")


if __name__ == "__main__":
    main()
