"""vLLM estimate accuracy on public start-up logs, judged on models the fit never saw.

Reads bench/estimate_measurements.csv (every row cites the log or report it was
read from), builds each model's facts from its config.json facts
(tests/fixtures/planner/configs, each citing where its numbers come from) and,
for every architecture in turn, refits the estimator's fitted constants
(:class:`gpumod.planner.estimate.ProfileConstants`) on the rows of all *other*
architectures and predicts the held-out one (leave-one-model-out; models that
share an architecture, such as a model and its quantized releases, are left out
together). Never in-sample.

Reported, for the planner and for a naive baseline in the same run
(KV = utilization x CUDA total - weights - 2 GiB):

- weights per GPU: median / p90 absolute % error (predicted from config.json);
- KV pool per GPU: median / p90 absolute GiB error, with the measured weights
  given (what the planner has once safetensors sizes or a calibration are known)
  and end to end (weights predicted too);
- KV tokens: median / p90 absolute % error (weights given);
- the rows that miss by more than 1 GiB or 3 %.

    .venv/bin/python bench/estimate_accuracy.py [--json] [--rows]
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402  (numpy comes with the gguf dependency)

from gpumod.planner.estimate import (  # noqa: E402
    DEFAULT_CONSTANTS,
    ProfileConstants,
    VLLMArgs,
    vllm_estimate,
)
from gpumod.planner.facts import ModelFacts, facts_from_config  # noqa: E402
from gpumod.planner.gputable import GIB, MIB, card, gpu_mib  # noqa: E402

TABLE = Path(__file__).with_name("estimate_measurements.csv")
CONFIGS = ROOT / "tests" / "fixtures" / "planner" / "configs"
FITTED = ("act_base_gib", "sampler_bytes_per_logit", "logprobs_bytes_per_logit",
          "multimodal_gib", "nvswitch_tp_gib")
NAIVE_OVERHEAD_GIB = 2.0


@dataclass
class Row:
    raw: dict[str, str]
    facts: ModelFacts
    group: str
    args: VLLMArgs
    gpu_mib: int
    gpu_name: str
    weights: float
    kv: float
    tokens: int | None


def load_rows() -> list[Row]:
    rows = []
    with TABLE.open() as fh:
        for r in csv.DictReader(fh):
            cfg = json.loads((CONFIGS / f"{r['config']}.json").read_text())
            facts = facts_from_config(cfg, key=r["model"])
            args = VLLMArgs(tp=int(r["tp"]), pp=int(r["pp"] or 1),
                            gpu_memory_utilization=float(r["gpu_memory_utilization"]),
                            max_model_len=int(r["max_model_len"]),
                            kv_cache_dtype=r["kv_cache_dtype"] or "auto",
                            dtype=r["dtype"] or "auto",
                            quantization=r["quantization"] if r["quantization"] == "fp8" else None,
                            max_num_seqs=int(r["max_num_seqs"]) if r["max_num_seqs"] else None,
                            max_num_batched_tokens=(int(r["max_num_batched_tokens"])
                                                    if r["max_num_batched_tokens"] else None),
                            enforce_eager=r["enforce_eager"] == "1",
                            version=r["engine_version"])
            # an architecture: models of the same shape (quantized releases, fine-tunes)
            group = (f"{facts.model_type}/{facts.num_layers}x{facts.hidden_size}/"
                     f"{facts.intermediate_size}/{facts.vocab_size}/{facts.num_experts}")
            rows.append(Row(r, facts, group, args, gpu_mib(r["gpu"]), r["gpu"],
                            float(r["measured_weights_gib"]), float(r["measured_kv_gib"]),
                            int(r["measured_kv_tokens"]) if r["measured_kv_tokens"] else None))
    return rows


def predict(row: Row, constants: ProfileConstants, *, weights_given: bool) -> Any:
    cal = ({"actual": {"weights_gib": row.weights}}
           if weights_given and row.args.pp == 1 else None)
    return vllm_estimate(row.facts, gpu_mib=row.gpu_mib, gpu_name=row.gpu_name, args=row.args,
                         calibration=cal, constants=constants)


def kv_of(e: Any) -> tuple[float, int]:
    """KV GiB of the first stage (what the logs print: rank 0) and the engine's tokens."""
    if e.stages:
        return e.stages[0]["kv_cache_gib"], e.kv_tokens
    return e.kv_cache_gib, e.kv_tokens


def fit(rows: list[Row]) -> ProfileConstants:
    """Least squares of the measured KV pools over the fitted constants (linear in each)."""
    consts = DEFAULT_CONSTANTS
    usable = [r for r in rows if r.args.pp == 1]
    for _ in range(3):      # the activation takes max(sampler, forward): refit per branch
        base = [kv_of(predict(r, consts, weights_given=True))[0] for r in usable]
        cols = []
        for name in FITTED:
            step = 1.0      # each constant enters linearly: one unit is as good as any
            bumped = replace(consts, **{name: getattr(consts, name) + step})
            moved = [kv_of(predict(r, bumped, weights_given=True))[0] for r in usable]
            cols.append([(b - m) / step for b, m in zip(base, moved, strict=True)])
        a = np.array(cols).T                       # d(overhead)/d(constant), per row
        resid = np.array([b - r.kv for b, r in zip(base, usable, strict=True)])
        keep = [i for i in range(len(FITTED)) if np.any(np.abs(a[:, i]) > 1e-9)]
        if not keep:
            return consts
        delta, *_ = np.linalg.lstsq(a[:, keep], resid, rcond=None)
        updates = {FITTED[i]: getattr(consts, FITTED[i]) + float(d)
                   for i, d in zip(keep, delta, strict=True)}
        consts = replace(consts, **updates)
    return consts


def naive_kv(row: Row) -> float:
    total = card(row.gpu_name, row.gpu_mib).usable_mib * MIB
    return row.args.gpu_memory_utilization * total / GIB - row.weights - NAIVE_OVERHEAD_GIB


def pct(estimate: float, actual: float) -> float:
    return (estimate - actual) / actual * 100


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered) + 0.5) - 1)]


def summary(values: list[float]) -> dict[str, Any]:
    a = [abs(v) for v in values]
    return {"n": len(a), "median": round(statistics.median(a), 2), "p90": round(p90(a), 2),
            "worst": round(max(a), 2)}


def run() -> dict[str, Any]:
    rows = load_rows()
    groups = sorted({r.group for r in rows})
    results = []
    fits = {}
    for g in groups:
        train = [r for r in rows if r.group != g]
        consts = fit(train)
        fits[g] = asdict(consts)
        for r in (r for r in rows if r.group == g):
            given = predict(r, consts, weights_given=True)
            e2e = predict(r, consts, weights_given=False)
            kv_given, tokens = kv_of(given)
            kv_e2e, _ = kv_of(e2e)
            w_pred = e2e.stages[0]["weights_gib"] if e2e.stages else e2e.weights_gib
            naive = naive_kv(r)
            per_token = given.kv_bytes_per_token or 1
            results.append({
                "model": r.raw["model"], "gpu": r.gpu_name, "tp": r.args.tp, "pp": r.args.pp,
                "version": r.raw["engine_version"], "util": r.args.gpu_memory_utilization,
                "max_model_len": r.args.max_model_len, "source": r.raw["source"],
                "weights": [round(w_pred, 2), r.weights, round(pct(w_pred, r.weights), 2)],
                "kv_given": [kv_given, r.kv, round(kv_given - r.kv, 2)],
                "kv_e2e": [kv_e2e, r.kv, round(kv_e2e - r.kv, 2)],
                "kv_naive": [round(naive, 2), r.kv, round(naive - r.kv, 2)],
                "tokens": ([tokens, r.tokens, round(pct(tokens, r.tokens), 2)]
                           if r.tokens else None),
                "tokens_naive": ([int(naive * GIB / per_token), r.tokens,
                                  round(pct(naive * GIB / per_token, r.tokens), 2)]
                                 if r.tokens and r.args.pp == 1 else None),
            })
    out = {"rows": results, "summary": {}}
    for key in ("weights", "kv_given", "kv_e2e", "kv_naive", "tokens", "tokens_naive"):
        idx = 2
        out["summary"][key] = summary([r[key][idx] for r in results if r[key]])
    out["counts"] = {"rows": len(rows), "architectures": len(groups),
                     "models": len({r.raw["model"] for r in rows}),
                     "gpus": sorted({r.gpu_name for r in rows}),
                     "versions": sorted({r.raw["engine_version"] for r in rows}),
                     "sources": len({r.raw["source"].split(" ")[0] for r in rows})}
    out["by_gpu"] = {g: summary([r["kv_given"][2] for r in results if r["gpu"] == g])
                     for g in out["counts"]["gpus"]}
    out["by_version"] = {v: summary([r["kv_given"][2] for r in results if r["version"] == v])
                         for v in out["counts"]["versions"]}
    out["constants"] = {"shipped": asdict(DEFAULT_CONSTANTS), "fit_on_all": asdict(fit(rows))}
    out["outliers"] = [r for r in results
                       if abs(r["kv_given"][2]) > 1.0 or (r["tokens"] and abs(r["tokens"][2]) > 3)]
    return out


def main() -> None:
    result = run()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
        return
    c = result["counts"]
    print(f"{c['rows']} runs, {c['models']} models ({c['architectures']} architectures), "
          f"GPUs: {', '.join(c['gpus'])}; vLLM {', '.join(c['versions'])}; "
          f"{c['sources']} sources")
    print("leave-one-model-out: constants refit without the held-out architecture\n")
    if "--rows" in sys.argv:
        print(f"{'model':44} {'gpu':10} {'tp':>2}{'pp':>2} {'vllm':>8} {'util':>5} {'len':>6}  "
              f"{'weights est/act':>15}  {'KV est/act (err GiB)':>22}  {'tokens err':>10}")
        for r in result["rows"]:
            w, k, t = r["weights"], r["kv_given"], r["tokens"]
            print(f"{r['model'][:44]:44} {r['gpu'][:10]:10} {r['tp']:>2}{r['pp']:>2} "
                  f"{r['version']:>8} {r['util']:>5} {r['max_model_len']:>6}  "
                  f"{w[0]:6.2f}/{w[1]:7.2f}  {k[0]:7.2f}/{k[1]:6.2f} ({k[2]:+5.2f})  "
                  f"{(f'{t[2]:+.2f}%' if t else '-'):>10}")
        print()
    s = result["summary"]
    print(f"{'':28}{'median':>10}{'p90':>10}{'worst':>10}     n")
    for key, label, unit in (("weights", "weights per GPU", "%"),
                             ("kv_given", "KV pool (weights given)", "GiB"),
                             ("kv_e2e", "KV pool (end to end)", "GiB"),
                             ("kv_naive", "KV pool, naive formula", "GiB"),
                             ("tokens", "KV tokens", "%"),
                             ("tokens_naive", "KV tokens, naive formula", "%")):
        v = s[key]
        print(f"{label:28}{v['median']:>9.2f}{unit[0]}{v['p90']:>9.2f}{unit[0]}"
              f"{v['worst']:>9.2f}{unit[0]}  {v['n']:>4}   ({unit})")
    print("\nKV pool error (weights given) by GPU: " + "; ".join(
        f"{g} {v['median']:.2f}/{v['p90']:.2f} GiB (n={v['n']})"
        for g, v in result["by_gpu"].items()))
    print("by vLLM version: " + "; ".join(
        f"{g} {v['median']:.2f}/{v['p90']:.2f} (n={v['n']})"
        for g, v in result["by_version"].items()) + "   (median/p90 GiB)")
    print("\noutliers (KV pool > 1 GiB or tokens > 3 % off):")
    for r in result["outliers"] or []:
        t = r["tokens"]
        print(f"  {r['model']} on {r['tp']}x{r['gpu']} vLLM {r['version']} len {r['max_model_len']}: "
              f"KV {r['kv_given'][0]} vs {r['kv_given'][1]} GiB"
              + (f", tokens {t[2]:+.1f}%" if t else "") + f"  [{r['source'][:60]}]")
    if not result["outliers"]:
        print("  none")
    fit_all = result["constants"]["fit_on_all"]
    print("\nfitted constants (shipped -> refit on all rows): " + ", ".join(
        f"{k} {result['constants']['shipped'][k]:.3g} -> {fit_all[k]:.3g}" for k in FITTED))


if __name__ == "__main__":
    main()
