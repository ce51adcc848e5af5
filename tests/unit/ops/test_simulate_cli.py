from __future__ import annotations

import json
import os

import pytest

from gpumod.ops.facts import remember as save_cached
from gpumod.planner.facts import facts_from_config
from gpumod.spec import ServiceSpec
from gpumod.store import services as services_table
from tests.support.cli import run_main

from .conftest import config


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A store at $GPUMOD_HOME with a 4090, three services and a mode (facts cached).

    `local`'s nvidia-smi is the fake one, showing the same idle 4090 (so a real GPU on the
    test machine does not change the answers).
    """
    from gpumod.testing.fake_nvidia_smi import write_state
    from gpumod.testing.shims import install_shims

    state = write_state(tmp_path / "gpu-state.json", ["rtx4090"])
    bin_dir = install_shims(tmp_path / "bin", gpu_state=state)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GPUMOD_HOME", str(tmp_path / "home"))
    from gpumod.store.db import open_store

    st = open_store()
    with st.transaction() as db:
        db.execute("INSERT INTO gpus (host, idx, uuid, name, memory_mib) VALUES "
                   "('local', 0, 'GPU-0', 'NVIDIA GeForce RTX 4090', 24564)")
    for key, name in (("Qwen/Qwen3-8B", "Qwen__Qwen3-8B"),
                      ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama__Llama-3.1-8B-Instruct")):
        save_cached(st, facts_from_config(config(name), key=key))
    specs = [
        ServiceSpec("emb", "local", "command", "bge", 8001, vram_mib=2500),
        ServiceSpec("chat", "local", "vllm", "Qwen/Qwen3-8B", 8002,
                    args=("--max-model-len", "16384")),
        ServiceSpec("big", "local", "vllm", "meta-llama/Llama-3.1-8B-Instruct", 8003,
                    args=("--max-model-len", "32768")),
    ]
    with st.transaction() as db:
        for s in specs:
            services_table.insert(st, s)
        db.execute("INSERT INTO modes (name, host) VALUES ('code', 'local')")
        db.execute("INSERT INTO mode_services (mode, service, position) VALUES "
                   "('code', 'emb', 0), ('code', 'chat', 1)")
    yield st
    st.close()
    from gpumod.store import db as dbmod

    dbmod._open.clear()


run = run_main  # (exit code, stdout, stderr)


def test_simulate_mode_fits_json(home, capsys):
    code, out, _ = run(capsys, "simulate", "--mode", "code", "--json")
    data = json.loads(out)
    assert code == 0 and data["fits"] and data["services"] == ["emb", "chat"]
    assert data["usage"] == "live" and data["gpus"][0]["used_mib"] == 0
    chat = next(a for a in data["assignments"] if a["service"] == "chat")
    assert 0 < chat["settings"]["gpu_memory_utilization"] < 1
    assert data["gpus"][0]["planned_mib"] > 2500


def test_simulate_add_overflows_with_picture_and_alternatives(home, capsys):
    code, out, _ = run(capsys, "simulate", "--mode", "code", "--add", "big", "--visual")
    assert code == 8
    assert "GPU 0  RTX 4090" in out and "legend:" in out
    assert "exceeds by" in out and "DOES NOT FIT" in out
    assert "[1]" in out


def test_simulate_context_override_makes_it_fit(home, capsys):
    code, out, _ = run(capsys, "simulate", "--services", "emb,big", "--json")
    assert code == 8 and not json.loads(out)["fits"]
    code, out, _ = run(capsys, "simulate", "--services", "emb,big", "--context", "big=8k",
                       "--json")
    data = json.loads(out)
    assert code == 0 and data["fits"], data
    big = next(a for a in data["assignments"] if a["service"] == "big")
    assert big["settings"]["max_model_len"] == 8192


def test_simulate_bad_input(home, capsys):
    code, _, err = run(capsys, "simulate", "--services", "nope")
    assert code == 3 and "unknown service 'nope'" in err
    code, _, err = run(capsys, "simulate", "--mode", "code", "--remove", "big")
    assert code == 2 and "not part of" in err
    code, _, err = run(capsys, "simulate", "--mode", "missing")
    assert code == 3 and "unknown mode" in err
    code, _, err = run(capsys, "simulate", "--mode", "code", "--context", "chat")
    assert code == 2 and "SERVICE=TOKENS" in err


def test_model_estimate_json_keys(home, capsys):
    code, out, _ = run(capsys, "model", "estimate", "Qwen/Qwen3-8B", "--gpu", "H100 80GB",
                       "--max-model-len", "32k", "--json")
    d = json.loads(out)
    assert code == 0
    for key in ("weights_gib", "kv_cache_gib", "kv_tokens", "max_concurrency", "total_gib"):
        assert key in d
    assert d["max_model_len"] == 32768 and d["fits"]


def test_model_estimate_llamacpp_and_errors(home, capsys, tmp_path):
    code, out, _ = run(capsys, "model", "estimate", "Qwen/Qwen3-8B", "--engine", "llamacpp",
                       "--gpu-mib", "24564", "--max-model-len", "8192", "--cache-type-k", "q8_0",
                       "--json")
    assert code == 0 and json.loads(out)["cache_type_k"] == "q8_0"
    code, _, err = run(capsys, "model", "estimate", "Qwen/Qwen3-8B", "--gpu", "Voodoo 5")
    assert code == 2 and "unknown GPU" in err
    code, _, err = run(capsys, "model", "estimate", "Qwen/Qwen3-8B",
                       "--gpu-memory-utilization", "1.2")
    assert code == 2 and "outside" in err
    code, _, err = run(capsys, "model", "estimate", "Qwen/Qwen3-8B", "--max-model-len", "1m")
    assert code == 2 and "beyond" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"hidden_size": 8}')
    code, _, err = run(capsys, "model", "estimate", str(bad))
    assert code == 2 and "lacks" in err


def test_model_info_shows_facts_and_calibrations(home, capsys):
    from gpumod.store.calibrations import record as record_calibration

    record_calibration(home, model="Qwen/Qwen3-8B", engine="vllm", engine_version="0.19.0",
                       gpu_name="H100 80GB", estimate={"weights_gib": 15.3},
                       actual={"weights_gib": 15.26})
    code, out, _ = run(capsys, "model", "info", "Qwen/Qwen3-8B", "--json")
    d = json.loads(out)
    assert code == 0 and d["facts"]["layers"] == 36
    assert d["calibrations"][0]["actual"]["weights_gib"] == 15.26
    code, out, _ = run(capsys, "model", "info", "Qwen/Qwen3-8B")
    assert "15.26" in out and "15.3" in out


def test_model_search_recorded_and_offline(home, capsys, hub_answers):
    code, out, _ = run(capsys, "model", "search", "qwen3", "8b", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)][:2] == ["Qwen/Qwen3-8B",
                                                                   "Qwen/Qwen3-8B-FP8"]


def test_model_search_offline(home, capsys, monkeypatch):
    import httpx
    import huggingface_hub

    def refuse(request):
        raise httpx.ConnectError("offline", request=request)

    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(refuse)))
    huggingface_hub.close_session()
    try:
        code, _, err = run(capsys, "model", "search", "qwen")
    finally:
        huggingface_hub.set_client_factory(lambda: httpx.Client())
        huggingface_hub.close_session()
    assert code == 5 and "cannot reach Hugging Face" in err


QWEN_ON_4090_LOG = """\
(EngineCore_DP0 pid=1) INFO [core.py:77] Initializing a V1 LLM engine (v0.19.0) with config
(EngineCore_DP0 pid=1) INFO [gpu_model_runner.py:2370] Model loading took 15.2700 GiB and 4.0 seconds
(EngineCore_DP0 pid=1) INFO [gpu_worker.py:298] Available KV cache memory: 4.10 GiB
(EngineCore_DP0 pid=1) INFO [kv_cache_utils.py:1087] GPU KV cache size: 29,856 tokens
"""


def test_simulate_uses_the_calibration_the_start_check_uses(home, capsys):
    """`gpumod simulate` sizes a service the way `pi start` admits it: measured KV pool first."""
    from gpumod.hosts.gpus import GPUUsage
    from gpumod.ops import calibration
    from gpumod.ops.hosts import get_host
    from gpumod.ops.simulate import service_specs
    from gpumod.ops.sizing import check_start

    def chat_notes():
        code, out, _ = run(capsys, "simulate", "--services", "chat", "--json")
        assert code == 0
        return json.loads(out)["assignments"][0]["notes"]

    assert not any("calibrated" in n for n in chat_notes())
    host = get_host(home, "local")
    (chat,) = service_specs(home, ["chat"])
    started = chat.with_(gpus=(0,), args=("--gpu-memory-utilization", "0.90", *chat.args))
    calibration.after_start(home, started, host, QWEN_ON_4090_LOG)
    notes = chat_notes()
    assert any("calibrated from the measurement" in n for n in notes), notes
    idle = [GPUUsage(g, 0, g.memory_mib, "550.54") for g in host.gpus]
    admitted = check_start(home, host, chat.with_(gpus=(0,)), idle, force=False)
    assert any("calibrated from the measurement" in n for n in admitted.notes)
    assert admitted.estimate["calibrated"] and admitted.estimate["weights_gib"] == 15.27
