from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from gpumod.errors import ConfigError, NotFoundError, TransportError, UsageError
from gpumod.ops.facts import model_facts
from gpumod.planner import facts as F
from tests.support.models import FIXTURES, config


def test_llama3_basic_facts():
    f = F.facts_from_config(config("meta-llama__Llama-3.1-8B-Instruct"), key="llama")
    assert (f.num_layers, f.num_heads, f.num_kv_heads, f.head_dim) == (32, 32, 8, 128)
    assert f.max_position == 131072 and not f.tie_embeddings
    # 8,030,261,248 parameters is Llama 3.1 8B's published count
    assert abs(f.param_count - 8_030_261_248) / 8_030_261_248 < 0.001


def test_qwen2_use_sliding_window_false_means_no_window():
    f = F.facts_from_config(config("Qwen__Qwen2.5-7B-Instruct"), key="q")
    assert f.sliding_window == 0 and set(f.attention_layer_types()) == {F.FULL}
    assert f.qkv_bias


def test_qwen3_moe_reads_experts():
    f = F.facts_from_config(config("Qwen__Qwen3-30B-A3B"), key="q")
    assert (f.num_experts, f.experts_per_token, f.moe_intermediate_size) == (128, 8, 768)
    assert abs(f.param_count - 30.5e9) / 30.5e9 < 0.01


def test_gemma2_alternates_sliding_and_full():
    f = F.facts_from_config(config("google__gemma-2-9b-it"), key="g")
    types = f.attention_layer_types()
    assert types[:4] == [F.SLIDING, F.FULL, F.SLIDING, F.FULL]
    assert types.count(F.SLIDING) == 21 and f.sliding_window == 4096
    assert f.tie_embeddings   # Gemma's config omits it; transformers' default applies


def test_gemma3_nested_text_config_and_defaults():
    f = F.facts_from_config(config("google__gemma-3-12b-it"), key="g3")
    assert f.hidden_size == 3840 and f.num_layers == 48
    assert f.head_dim == 256          # omitted in config.json, Gemma3TextConfig default
    assert f.vocab_size == 262208 and f.sliding_window == 1024
    types = f.attention_layer_types()
    assert types.count(F.FULL) == 8 and types[5] == F.FULL and types[0] == F.SLIDING
    assert f.vision_params > 300_000_000
    assert any("text_config" in n for n in f.notes)


def test_deepseek_v3_mla_and_fp8():
    f = F.facts_from_config(config("deepseek-ai__DeepSeek-V3"), key="ds")
    assert f.is_mla and f.kv_lora_rank == 512 and f.qk_rope_head_dim == 64
    assert f.quant_method == "fp8" and f.quant_bits == 8
    assert f.num_experts == 256 and f.first_dense_layers == 3
    assert abs(f.param_count - 671e9) / 671e9 < 0.02


def test_gpt_oss_layer_types_and_mxfp4():
    f = F.facts_from_config(config("openai__gpt-oss-20b"), key="oss")
    assert f.attention_layer_types()[:2] == [F.SLIDING, F.FULL] and f.sliding_window == 128
    assert f.quant_method == "mxfp4" and f.num_experts == 32 and f.experts_per_token == 4


def test_mistral_v01_window_applies_to_all_layers():
    f = F.facts_from_config(config("mistralai__Mistral-7B-v0.1"), key="m")
    assert set(f.attention_layer_types()) == {F.SLIDING} and f.sliding_window == 4096
    f3 = F.facts_from_config(config("mistralai__Mistral-7B-Instruct-v0.3"), key="m3")
    assert set(f3.attention_layer_types()) == {F.FULL}


def test_hybrid_linear_attention_layers():
    cfg = {"model_type": "qwen3_next", "hidden_size": 2048, "num_hidden_layers": 8,
           "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
           "full_attention_interval": 4, "linear_num_value_heads": 32, "linear_num_key_heads": 16,
           "linear_key_head_dim": 128, "linear_value_head_dim": 128, "vocab_size": 151936}
    f = F.facts_from_config(cfg, key="next")
    assert f.attention_layer_types().count(F.LINEAR) == 6
    assert f.linear_state_bytes > 32 * 128 * 128 * 4 - 1


def test_config_without_needed_fields_says_what_is_missing():
    with pytest.raises(ConfigError, match="num_attention_heads"):
        F.facts_from_config({"hidden_size": 10, "num_hidden_layers": 2}, key="x")
    with pytest.raises(ConfigError):
        F.facts_from_config(["not", "a", "dict"], key="x")  # type: ignore[arg-type]


def _write_safetensors(path, tensors):
    header, offset = {}, 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_local_folder_index_total_size(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config("meta-llama__Llama-3.1-8B-Instruct")))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 16060522496}, "weight_map": {}}))
    f = F.facts_from_folder(tmp_path)
    assert f.weight_bytes == 16060522496 and "total_size" in f.weight_bytes_source


def test_local_folder_safetensors_headers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config("Qwen__Qwen3-8B")))
    _write_safetensors(tmp_path / "model-00001-of-00002.safetensors",
                       {"a": ("BF16", [4, 8], 64), "b": ("F32", [2], 8)})
    _write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"c": ("BF16", [10], 20)})
    f = F.facts_from_folder(tmp_path)
    assert f.weight_bytes == 92 and f.param_count == 44


def test_local_folder_bad_safetensors_header(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config("Qwen__Qwen3-8B")))
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"nope!")
    with pytest.raises(ConfigError, match="not JSON"):
        F.facts_from_folder(tmp_path)


def test_folder_without_config(tmp_path):
    with pytest.raises(NotFoundError, match=r"config\.json"):
        F.facts_from_folder(tmp_path)


def write_gguf(path, n_layers=2, split=None):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layers)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_file_type(1)
    w.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float16))
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((64, 64), dtype=np.float16))
        w.add_tensor(f"blk.{i}.ffn_up.weight", np.zeros((128, 64), dtype=np.float16))
    w.add_tensor("output.weight", np.zeros((100, 64), dtype=np.float16))
    w.add_tensor("output_norm.weight", np.zeros((64,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_tensor_sizes(tmp_path):
    p = tmp_path / "tiny.gguf"
    write_gguf(p)
    f = F.facts_from_gguf(p)
    assert f.num_layers == 2 and f.num_kv_heads == 2 and f.head_dim == 16
    assert f.gguf_layer_bytes == [64 * 64 * 2 + 128 * 64 * 2] * 2
    assert f.gguf_embd_bytes == 100 * 64 * 2 and f.gguf_output_bytes == 100 * 64 * 2
    assert f.gguf_other_bytes == 64 * 4
    assert f.weight_bytes == sum(f.gguf_layer_bytes) + 2 * 100 * 64 * 2 + 256
    assert f.gguf_file_type == "F16"


def test_gguf_split_files_are_summed(tmp_path):
    a = tmp_path / "m-00001-of-00002.gguf"
    b = tmp_path / "m-00002-of-00002.gguf"
    write_gguf(a)
    write_gguf(b)
    write_gguf(tmp_path / "single.gguf")
    f = F.facts_from_gguf(a)
    single = F.facts_from_gguf(tmp_path / "single.gguf")
    assert f.weight_bytes == 2 * single.weight_bytes and len(f.gguf_files) == 2
    b.unlink()
    with pytest.raises(NotFoundError, match="missing"):
        F.facts_from_gguf(a)


def test_gguf_garbage_file(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUF not really")
    with pytest.raises(ConfigError):
        F.facts_from_gguf(p)


def test_ollama_show_recorded_answer():
    answer = json.loads((FIXTURES / "ollama_show_qwen3_8b.json").read_text())
    f = F.facts_from_ollama_show("qwen3:8b", answer)
    assert (f.num_layers, f.num_kv_heads, f.head_dim, f.max_position) == (36, 8, 128, 40960)
    assert f.param_count == 8190735360
    assert f.weight_bytes == int(8190735360 * 4.89 / 8)
    with pytest.raises(ConfigError):
        F.facts_from_ollama_show("x", {"details": {}})


def test_ollama_fetch_over_http_transport():
    import httpx

    answer = json.loads((FIXTURES / "ollama_show_qwen3_8b.json").read_text())

    def handler(request):
        body = json.loads(request.content)
        if body["model"] == "qwen3:8b":
            return httpx.Response(200, json=answer)
        return httpx.Response(404, json={"error": "model not found"})

    t = httpx.MockTransport(handler)
    assert F.fetch_ollama_show("http://o", "qwen3:8b", transport=t)["details"]["family"] == "qwen3"
    with pytest.raises(NotFoundError):
        F.fetch_ollama_show("http://o", "nope", transport=t)


def test_hub_facts_through_huggingface_hub(hub_answers, store):
    f = model_facts(store, "Qwen/Qwen3-8B")
    assert f.source == "hf" and f.num_layers == 36
    assert f.param_count == 8190735360 and f.weight_bytes == 2 * 8190735360
    assert "model-00001-of-00005.safetensors" in f.files
    n = len(hub_answers)
    # second time: from the store, no request
    again = model_facts(store, "Qwen/Qwen3-8B")
    assert again.weight_bytes == f.weight_bytes and len(hub_answers) == n


def test_hub_unknown_repo_is_not_found(hub_answers, store):
    with pytest.raises(NotFoundError, match="no model"):
        model_facts(store, "nobody/nothing")


def test_hub_offline_is_a_transport_error(store, hub_offline):
    with pytest.raises(TransportError, match="cannot reach Hugging Face"):
        model_facts(store, "Qwen/Qwen3-8B")


def test_hub_offline_through_the_hubs_own_httpx2_client_is_a_transport_error(store):
    """huggingface_hub >= 1.x uses `httpx2`, whose errors are not httpx's: an offline
    machine must still get the typed one-line error, not an internal error (exit 70)."""
    httpx2 = pytest.importorskip("httpx2")
    import huggingface_hub
    from huggingface_hub.utils import _http

    def refuse(request):
        raise httpx2.ConnectError("no network", request=request)

    huggingface_hub.set_client_factory(
        lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    huggingface_hub.close_session()
    try:
        with pytest.raises(TransportError, match="cannot reach Hugging Face"):
            model_facts(store, "Qwen/Qwen3-8B")
    finally:
        huggingface_hub.set_client_factory(_http.default_client_factory)
        huggingface_hub.close_session()


def test_resolve_rejects_malformed_ids(store):
    with pytest.raises(UsageError):
        model_facts(store, "bad id with spaces")
    with pytest.raises(NotFoundError):
        model_facts(store, "/no/such/folder")
