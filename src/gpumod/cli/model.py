"""`gpumod model`: model facts, VRAM estimates, Hugging Face search."""

from __future__ import annotations

from typing import Any

import click

from gpumod.cli.common import console, json_option, plain, print_json, table


@click.group()
def model() -> None:
    """Model facts and VRAM estimates (vLLM, llama.cpp)."""


@model.command()
@click.argument("model_id", metavar="MODEL")
@click.option("--engine", type=click.Choice(["vllm", "llamacpp"]), default="vllm",
              show_default=True)
@click.option("--gpu", metavar="NAME", help='GPU type, e.g. "H100 80GB", "RTX 4090", "L4" '
              "(default: the active host's first GPU, else an H100 80GB).")
@click.option("--gpu-mib", type=int, metavar="N", help="GPU memory in MiB (nvidia-smi total).")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tensor parallel size (vLLM).")
@click.option("--gpu-memory-utilization", "util", type=float, help="vLLM share of the card.")
@click.option("--max-model-len", "max_len", metavar="TOKENS",
              help="Context (vLLM --max-model-len, llama.cpp -c); 32k works.")
@click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]),
              default="auto", show_default=True)
@click.option("--cache-type-k", default="f16", show_default=True, help="llama.cpp -ctk.")
@click.option("--cache-type-v", default="f16", show_default=True, help="llama.cpp -ctv.")
@click.option("--n-gpu-layers", "ngl", type=click.IntRange(min=0), help="llama.cpp -ngl (default: all).")
@click.option("--parallel", type=click.IntRange(min=1), default=1, show_default=True, help="llama.cpp -np.")
@click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True,
              help="Pipeline parallel size (vLLM): stages, each of --tp GPUs.")
@click.option("--max-num-seqs", type=click.IntRange(min=1), help="vLLM --max-num-seqs.")
@click.option("--max-num-batched-tokens", type=click.IntRange(min=1),
              help="vLLM --max-num-batched-tokens (default: vLLM's for the version and card).")
@click.option("--batch", "batch", type=click.IntRange(min=1), help="llama.cpp -b.")
@click.option("--ubatch", "ubatch", type=click.IntRange(min=1), help="llama.cpp -ub.")
@click.option("--vllm-version", "version", metavar="X.Y",
              help="vLLM version (default: the active host's, else 0.19).")
@click.option("--refresh", is_flag=True, help="Refetch facts from Hugging Face.")
@json_option
def estimate(model_id: str, engine: str, gpu: str | None, gpu_mib: int | None, tp: int,
             util: float | None, max_len: str | None, kv_cache_dtype: str, cache_type_k: str,
             cache_type_v: str, ngl: int | None, parallel: int, pp: int,
             max_num_seqs: int | None, max_num_batched_tokens: int | None, batch: int | None,
             ubatch: int | None, version: str | None, refresh: bool, as_json: bool) -> None:
    """Per-GPU memory for MODEL (HF id, model folder or .gguf) on an engine."""
    from gpumod.ops.estimate import EstimateRequest
    from gpumod.ops.estimate import estimate as run

    data = run(EstimateRequest(
        model_id, engine, gpu=gpu, gpu_mib=gpu_mib, tp=tp, pp=pp, gpu_memory_utilization=util,
        max_model_len=max_len, kv_cache_dtype=kv_cache_dtype, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, cache_type_k=cache_type_k,
        cache_type_v=cache_type_v, n_gpu_layers=ngl, parallel=parallel, batch=batch,
        ubatch=ubatch, version=version, refresh=refresh))
    if as_json:
        print_json(data)
        return
    _print_estimate(data)


def _print_estimate(d: dict[str, Any]) -> None:
    c = console()
    c.print(plain(f"{d['model']} on {d['gpu']} ({d['gpu_mib']} MiB), engine {d['engine']}"))
    t = table("item", "GiB per GPU", "note")
    if d["engine"] == "vllm":
        rows = [("weights", d["weights_gib"],
                 f"tp={d['tp']}" + (f", pp={d['pp']}" if d.get("pp", 1) > 1 else "")),
                ("activation peak", d["activation_gib"],
                 f"profile run: {d['max_num_batched_tokens']} tokens, "
                 f"{d['max_num_seqs']} sequences (vLLM {d['version']})"),
                ("non-torch (NCCL, cuBLAS)", d["non_torch_gib"], ""),
                ("CUDA graphs", d["cuda_graph_gib"], "outside the budget before vLLM 0.21"),
                ("KV cache pool", d["kv_cache_gib"],
                 f"{d['kv_tokens']:,} tokens, {d['kv_bytes_per_token']:,} B/token"),
                ("budget (util x total)", d["requested_gib"],
                 f"--gpu-memory-utilization {d['gpu_memory_utilization']:.2f}"),
                ("CUDA context", d["cuda_context_gib"], ""),
                ("total on the card", d["total_gib"], "what nvidia-smi will show")]
    else:
        rows = [("weights (offloaded)", d["weights_gib"],
                 f"{d['layers_offloaded']} layers"),
                ("KV cache", d["kv_cache_gib"],
                 f"-c {d['ctx']}, {d['cache_type_k']}/{d['cache_type_v']}"),
                ("compute buffer", d["compute_gib"], ""),
                ("CUDA context", d["cuda_context_gib"], ""),
                ("total on the card", d["total_gib"], "")]
    for name, value, note in rows:
        t.add_row(name, f"{value:.2f}", plain(note))
    c.print(t)
    if d["engine"] == "vllm":
        c.print(plain(f"max concurrency at {d['max_model_len']:,} tokens: "
                      f"{d['max_concurrency']:.2f}x; smallest utilization for one sequence: "
                      f"{d['min_gpu_memory_utilization']}"))
    for note in d.get("notes", []):
        c.print(plain(f"note: {note}"))
    for problem in d.get("problems", []):
        c.print(plain(f"does not fit: {problem}"))
    c.print(plain("fits" if d["fits"] else "DOES NOT FIT"))


@model.command()
@click.argument("model_id", metavar="MODEL")
@click.option("--ollama", "ollama_url", metavar="URL",
              help="Read MODEL from an Ollama server's /api/show (e.g. http://127.0.0.1:11434).")
@click.option("--refresh", is_flag=True, help="Refetch facts from Hugging Face.")
@json_option
def info(model_id: str, ollama_url: str | None, refresh: bool, as_json: bool) -> None:
    """Facts about MODEL and its calibrations (estimate vs what the engine reported)."""
    from gpumod.ops import api

    facts = api.model_info(model_id, ollama_url=ollama_url, refresh=refresh)
    cals = facts.pop("calibrations")
    data = {"facts": facts, "calibrations": cals}
    if as_json:
        print_json(data)
        return
    c = console()
    t = table("fact", "value")
    for k, v in data["facts"].items():
        if v in (None, [], {}, ""):
            continue
        t.add_row(k, plain(v))
    c.print(t)
    if cals:
        ct = table("when", "engine", "gpu", "item", "estimate", "actual")
        for cal in cals:
            for item in ("weights_gib", "activation_gib", "kv_cache_gib", "compute_gib"):
                a = cal["actual"].get(item)
                if a is None:
                    continue
                ct.add_row(plain(cal["created_at"]),
                           plain(f"{cal['engine']} {cal['engine_version']}".strip()),
                           plain(cal["gpu_name"]), item,
                           plain(cal["estimate"].get(item, "?")), plain(a))
        c.print(ct)
    else:
        c.print(plain("no calibrations yet (recorded after a service starts)"))


@model.command()
@click.argument("query", nargs=-1, required=True)
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
def search(query: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Search Hugging Face for models (most downloaded first)."""
    from gpumod.ops import api

    results = api.model_search(" ".join(query), limit=limit)
    if as_json:
        print_json(results)
        return
    t = table("model", "downloads", "likes", "task")
    for r in results:
        t.add_row(plain(r["id"]), plain(r["downloads"]), plain(r["likes"]),
                  plain(r["pipeline_tag"] or ""))
    console().print(t)
    if not results:
        click.echo("no models found", err=True)
