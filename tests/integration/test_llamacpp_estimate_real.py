"""The llama.cpp estimate against what the real llama-server reserves (CPU build).

llama-server logs the KV cache it allocates ("CPU KV buffer size = N MiB") and the
compute buffer its scheduler reserves for the worst micro-batch ("CPU compute
buffer size = N MiB"). The planner's estimate of both must be within 5 % for
several context sizes, batch and micro-batch sizes, with and without flash
attention: on the tiny SmolLM2 model, and on a llama of other widths written
here with the same tokenizer (so the estimate is not tuned to one shape).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gpumod.planner.estimate import llamacpp_estimate, parse_llamacpp_args
from gpumod.planner.facts import facts_from_gguf
from tests.support.real import free_port, llama_server_binary, tiny_gguf

pytestmark = pytest.mark.llama

MIB = 1024 * 1024
KV_LINE = re.compile(r"(\w+) KV buffer size = +([0-9.]+) MiB")
COMPUTE_LINE = re.compile(r"(\w+) compute buffer size = +([0-9.]+) MiB")


def reserved(model: Path, args: list[str]) -> tuple[float, float]:
    """(KV MiB, compute MiB) a real llama-server reports for MODEL with ARGS."""
    argv = [llama_server_binary(), "-m", str(model), "--host", "127.0.0.1",
            "--port", str(free_port()), "-t", "2", "-lv", "4", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if COMPUTE_LINE.search(line) or time.monotonic() > deadline:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    text = "".join(lines)
    kv = [float(m.group(2)) for m in KV_LINE.finditer(text)]
    compute = [float(m.group(2)) for m in COMPUTE_LINE.finditer(text)]
    assert kv and compute, f"llama-server printed no buffer lines:\n{text[-2000:]}"
    return sum(kv), compute[-1]


def write_llama(path: Path, like: Path, *, hidden: int, inter: int, layers: int, heads: int,
                kv_heads: int) -> Path:
    """A llama GGUF of these widths (random f16 weights) with LIKE's tokenizer."""
    import gguf
    import numpy as np

    src = gguf.GGUFReader(str(like))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(8192)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_file_type(1)
    copy = {"tokenizer.ggml.model": w.add_tokenizer_model,
            "tokenizer.ggml.pre": w.add_tokenizer_pre,
            "tokenizer.ggml.tokens": w.add_token_list,
            "tokenizer.ggml.token_type": w.add_token_types,
            "tokenizer.ggml.merges": w.add_token_merges,
            "tokenizer.ggml.bos_token_id": w.add_bos_token_id,
            "tokenizer.ggml.eos_token_id": w.add_eos_token_id}
    for name, add in copy.items():
        if name in src.fields:
            add(src.fields[name].contents())
    vocab = len(src.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float16))

    tensor("token_embd.weight", vocab, hidden)
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    head = hidden // heads
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(hidden, dtype=np.float32))
        tensor(p + "attn_q.weight", heads * head, hidden)
        tensor(p + "attn_k.weight", kv_heads * head, hidden)
        tensor(p + "attn_v.weight", kv_heads * head, hidden)
        tensor(p + "attn_output.weight", hidden, heads * head)
        w.add_tensor(p + "ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        tensor(p + "ffn_gate.weight", inter, hidden)
        tensor(p + "ffn_up.weight", inter, hidden)
        tensor(p + "ffn_down.weight", hidden, inter)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def check(model: Path, argv: list[str]) -> None:
    kv_mib, compute_mib = reserved(model, argv)
    args = parse_llamacpp_args(argv)
    args.n_gpu_layers = 999          # every layer on the one device (here: the CPU)
    e = llamacpp_estimate(facts_from_gguf(model), gpu_mib=10**6, args=args)
    assert e.kv_cache_bytes / MIB == pytest.approx(kv_mib, rel=0.05), argv
    assert e.compute_bytes / MIB == pytest.approx(compute_mib, rel=0.05), (argv, compute_mib)


@pytest.mark.parametrize("argv", [
    ["-c", "8192", "-b", "512", "-ub", "512", "-fa", "on"],
    ["-c", "2048", "-b", "2048", "-ub", "2048", "-fa", "on"],
    ["-c", "2048", "-b", "512", "-ub", "64", "-fa", "on"],
    ["-c", "4096", "-b", "256", "-ub", "1024", "-fa", "on"],      # -ub above -b: clamped
    ["-c", "2048", "-b", "512", "-ub", "512", "-fa", "off"],
    ["-c", "8192", "-b", "1024", "-ub", "128", "-fa", "off"],
    ["-c", "4096", "-b", "4096", "-ub", "1024", "-fa", "off", "-ctk", "q8_0"],
])
def test_tiny_model_buffers_match_llama_server(argv):
    check(tiny_gguf(), argv)


def test_other_widths_match_too(tmp_path):
    model = write_llama(tmp_path / "wide.gguf", tiny_gguf(), hidden=512, inter=2816, layers=2,
                        heads=8, kv_heads=2)
    for argv in (["-c", "2048", "-b", "512", "-ub", "512", "-fa", "on"],
                 ["-c", "8192", "-b", "512", "-ub", "256", "-fa", "off"]):
        check(model, argv)
