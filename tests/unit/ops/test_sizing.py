"""One sizing path: the start check (ops.sizing.check_start), `gpumod model estimate`
(ops.sizing.estimate) and what a start teaches (ops.calibration.after_start)."""

from __future__ import annotations

import json

import pytest

from gpumod.errors import CapacityError, UsageError
from gpumod.hosts.gpus import GPUUsage
from gpumod.hosts.model import GPU, Host
from gpumod.ops import calibration as C
from gpumod.ops.facts import remember
from gpumod.ops.sizing import check_start
from gpumod.ops.sizing import estimate as sizing_estimate
from gpumod.planner.admission import quantized_variants
from gpumod.planner.calibration import setup_key
from gpumod.planner.facts import facts_from_config
from gpumod.planner.gputable import cuda_total_mib
from gpumod.spec import ServiceSpec
from tests.support.cli import run_cli
from tests.support.models import FIXTURES, config

H100 = 81559
H100_NAME = "NVIDIA H100 80GB HBM3"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
CODER = "Qwen/Qwen3-Coder-30B-A3B-Instruct"       # in the catalog, with an -FP8 release
GGUF_LOG = (FIXTURES / "logs" / "llama-server-qwen3-8b.log").read_text()


@pytest.fixture
def facts_store(store):
    remember(store, facts_from_config(config("meta-llama__Llama-3.1-8B-Instruct"), key=LLAMA))
    # Qwen3-Coder-30B-A3B has Qwen3-30B-A3B's architecture
    remember(store, facts_from_config(config("Qwen__Qwen3-30B-A3B"), key=CODER))
    remember(store, facts_from_config(config("Qwen__Qwen3-8B"), key="Qwen/Qwen3-8B"))
    return store


def host(n: int = 1, *, kind: str = "local", version: str = "0.19.0") -> Host:
    gpus = tuple(GPU(i, f"GPU-{i}", H100_NAME, H100) for i in range(n))
    return Host("pod1" if kind == "ssh" else "local", kind, gpus=gpus,
                engine_env={"vllm_version": version})


def usage(h: Host, used_gib: float | list[float]) -> list[GPUUsage]:
    used = used_gib if isinstance(used_gib, list) else [used_gib] * len(h.gpus)
    return [GPUUsage(g, int(u * 1024), g.memory_mib - int(u * 1024), "550.54")
            for g, u in zip(h.gpus, used, strict=True)]


def spec(model: str = LLAMA, *args: str, engine: str = "vllm", gpus=(0,),
         name: str = "chat") -> ServiceSpec:
    return ServiceSpec(name, "local", engine, model, 8000, gpus=tuple(gpus), args=tuple(args))


def flag(args, name):
    return args[args.index(name) + 1]


# -- admitted ---------------------------------------------------------------------------

def test_fits_and_computes_utilization_from_free_memory(facts_store):
    h = host()
    adm = check_start(facts_store, h, spec(LLAMA, "--max-model-len", "16384"),
                      usage(h, 40), force=False)
    util = float(flag(adm.args, "--gpu-memory-utilization"))
    usable = cuda_total_mib(H100)
    free = usable - 40 * 1024
    # a share of the WHOLE card that fits the memory free now (with the CUDA context) ...
    assert util * usable + 0.51 * 1024 <= free
    # ... and not the engine default, which would not start
    assert util < 0.6
    # enough for the weights and the KV cache of at least one 16k sequence
    assert adm.estimate["max_concurrency"] >= 1 and adm.estimate["weights_gib"] > 14
    assert adm.args[:2] == ("--max-model-len", "16384")          # the user's args stay
    assert any("--gpu-memory-utilization" in n and "computed" in n for n in adm.notes)
    assert any("39.2 of 79.2 GiB free" in n for n in adm.notes)


def test_user_utilization_that_fits_is_kept_unchanged(facts_store):
    h = host()
    args = ("--max-model-len", "8192", "--gpu-memory-utilization", "0.4")
    adm = check_start(facts_store, h, spec(LLAMA, *args), usage(h, 10), force=False)
    assert adm.args == args
    assert any(n.startswith("your --gpu-memory-utilization 0.40 fits") for n in adm.notes)


def test_llamacpp_explicit_settings_added_only_where_absent(facts_store):
    h = host()
    adm = check_start(facts_store, h, spec("Qwen/Qwen3-8B", "-c", "8192", engine="llamacpp"),
                      usage(h, 2), force=False)
    assert flag(adm.args, "-c") == "8192" and adm.args.count("-c") == 1
    assert flag(adm.args, "-ngl") == "999"
    assert flag(adm.args, "-ctk") == "f16" and flag(adm.args, "-ctv") == "f16"
    adm2 = check_start(facts_store, h, spec("Qwen/Qwen3-8B", "-ctk", "q8_0", "-ngl", "20",
                                            engine="llamacpp"), usage(h, 2), force=False)
    assert flag(adm2.args, "-ctk") == "q8_0" and adm2.args.count("-ctk") == 1
    assert flag(adm2.args, "-ngl") == "20" and flag(adm2.args, "-c") == "4096"


# -- refused ----------------------------------------------------------------------------

def test_user_utilization_too_large_for_free_memory_says_the_max_that_fits(facts_store):
    h = host()
    s = spec(LLAMA, "--max-model-len", "16384", "--gpu-memory-utilization", "0.9")
    with pytest.raises(CapacityError) as err:
        check_start(facts_store, h, s, usage(h, 40), force=False)
    e = err.value
    assert e.message.startswith(f"{LLAMA} with --gpu-memory-utilization 0.90 needs ")
    assert "but GPU 0 has 39.2 GiB free" in e.message and "\n" not in e.message
    assert "the most that fits now is --gpu-memory-utilization 0." in e.hint
    best = float(e.hint.split("--gpu-memory-utilization ")[1].split()[0])
    assert best * cuda_total_mib(H100) + 0.51 * 1024 <= cuda_total_mib(H100) - 40 * 1024
    # and that value is admitted as it is
    ok = check_start(facts_store, h, spec(LLAMA, "--max-model-len", "16384",
                                          "--gpu-memory-utilization", f"{best:.2f}"),
                     usage(h, 40), force=False)
    assert flag(ok.args, "--gpu-memory-utilization") == f"{best:.2f}"
    assert "--force to start anyway" in e.hint


def test_user_utilization_too_small_for_the_model(facts_store):
    h = host()
    s = spec(LLAMA, "--max-model-len", "16384", "--gpu-memory-utilization", "0.1")
    with pytest.raises(CapacityError) as err:
        check_start(facts_store, h, s, usage(h, 0), force=False)
    assert "no memory left for the KV cache" in err.value.message
    assert "--gpu-memory-utilization" in err.value.hint


def test_does_not_fit_lists_alternatives_with_a_catalog_quantized_variant(facts_store):
    h = host()
    with pytest.raises(CapacityError) as err:
        check_start(facts_store, h, spec(CODER, "--max-model-len", "32768"), usage(h, 30),
                    force=False)
    e = err.value
    assert e.message.startswith(f"{CODER} needs ") and "per GPU with tp=1" in e.message
    assert "but GPU 0 has 49.2 GiB free" in e.message
    assert f"use {CODER}-FP8" in e.hint                 # from catalog/data/models.yaml
    assert "[1]" in e.hint and "--pod" in e.hint and e.hint.endswith("--force to start anyway")


def test_alternatives_rank_shorter_context_fp8_kv_and_more_gpus(facts_store):
    h = host(2)
    # 50 GiB used on both GPUs: 8B weights fit, a 128k context does not
    with pytest.raises(CapacityError) as err:
        check_start(facts_store, h, spec(LLAMA), usage(h, [50, 50]), force=False)
    hint = err.value.hint
    assert "[1] chat: --max-model-len" in hint
    assert "--kv-cache-dtype fp8" in hint
    assert "2 GPUs with --tensor-parallel-size 2" in hint
    assert hint.index("--max-model-len") < hint.index("--tensor-parallel-size 2")


def test_force_admits_with_a_warning(facts_store):
    h = host()
    s = spec(LLAMA, "--max-model-len", "16384", "--gpu-memory-utilization", "0.9")
    adm = check_start(facts_store, h, s, usage(h, 40), force=True)
    assert adm.args == s.args                                  # the user's choice stands
    assert any(n.startswith("warning: --force: starting although") for n in adm.notes)
    # computed settings: the most that fits free memory is used
    adm2 = check_start(facts_store, h, spec(CODER, "--max-model-len", "32768"), usage(h, 30),
                       force=True)
    util = float(flag(adm2.args, "--gpu-memory-utilization"))
    assert util * cuda_total_mib(H100) <= cuda_total_mib(H100) - 30 * 1024
    assert any("warning: --force" in n for n in adm2.notes)


def test_bad_user_args_are_usage_errors_unless_forced(facts_store):
    h = host()
    s = spec(LLAMA, "--max-model-len", "1m")
    with pytest.raises(UsageError, match="beyond"):
        check_start(facts_store, h, s, usage(h, 0), force=False)
    adm = check_start(facts_store, h, s, usage(h, 0), force=True)
    assert adm.args == s.args and "warning: --force: not checked" in adm.notes[0]
    with pytest.raises(UsageError, match="GPU 3 does not exist"):
        check_start(facts_store, h, spec(LLAMA, gpus=(3,)), usage(h, 0), force=False)


# -- not checked (and not blocked) ------------------------------------------------------

def test_no_nvidia_smi_admits_with_a_note(facts_store):
    h = Host("cpu", "local")
    s = spec("Qwen/Qwen3-8B", "-c", "2048", engine="llamacpp", gpus=())
    adm = check_start(facts_store, h, s, None, force=False)
    assert adm.args == s.args and adm.estimate is None
    assert adm.notes == ["no VRAM check: no nvidia-smi on cpu"]


def test_unknown_model_admits_with_a_note(store, hub_answers):
    h = host()
    s = spec("acme/not-a-model", "--max-model-len", "4096")
    adm = check_start(store, h, s, usage(h, 0), force=False)
    assert adm.args == s.args and adm.estimate is None
    assert adm.notes[0].startswith("no VRAM check: no facts for acme/not-a-model")


def test_offline_uncached_model_admits_with_a_note_and_cached_one_is_checked(facts_store,
                                                                              hub_offline):
    h = host()
    adm = check_start(facts_store, h, spec("Qwen/Qwen2.5-7B-Instruct"), usage(h, 0),
                      force=False)
    assert "no VRAM check" in adm.notes[0] and "reach" in adm.notes[0]
    # a model fetched before works offline: it is checked
    with pytest.raises(CapacityError):
        check_start(facts_store, h, spec(CODER), usage(h, 30), force=False)


def test_model_path_on_a_pod_is_not_read_here(facts_store, tmp_path):
    h = host(kind="ssh")
    adm = check_start(facts_store, h, spec(str(tmp_path)), usage(h, 0), force=False)
    assert adm.notes == [f"no VRAM check: {tmp_path} is a path on pod1, which cannot be read "
                         "from here"]


def test_local_model_folder_is_read(facts_store, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config("Qwen__Qwen3-8B")))
    h = host()
    adm = check_start(facts_store, h, spec(str(tmp_path), "--max-model-len", "8192"),
                      usage(h, 0), force=False)
    assert "--gpu-memory-utilization" in adm.args and adm.estimate["model"] == str(tmp_path)
    missing = check_start(facts_store, h, spec(str(tmp_path / "gone")), usage(h, 0),
                          force=False)
    assert missing.notes[0].startswith("no VRAM check:") and "no such" in missing.notes[0]


def test_pipeline_parallel_is_sized_data_parallel_is_not_and_declared_budgets(facts_store):
    h = host(2)
    s = spec(LLAMA, "--pipeline-parallel-size", "2", "--max-model-len", "8192", gpus=(0, 1))
    adm = check_start(facts_store, h, s, usage(h, 0), force=False)
    # two stages of 16 layers: about half the weights per GPU
    assert "--gpu-memory-utilization" in adm.args and 7 < adm.estimate["weights_gib"] < 8
    assert adm.estimate["pp"] == 2
    dp = spec(LLAMA, "--data-parallel-size", "2", gpus=(0, 1))
    adm = check_start(facts_store, h, dp, usage(h, 0), force=False)
    assert adm.args == dp.args and "data parallel" in adm.notes[0]
    cmd = ServiceSpec("emb", "local", "command", "bge", 8001, gpus=(0,), vram_mib=30 * 1024)
    assert "fits" in check_start(facts_store, h, cmd, usage(h, 0), force=False).notes[0]
    with pytest.raises(CapacityError, match=r"declares 30\.0 GiB per GPU but GPU 0 has"):
        check_start(facts_store, h, cmd, usage(h, 60), force=False)


def test_quantized_variants_from_the_catalog():
    assert quantized_variants(CODER, "vllm") == (f"{CODER}-FP8",)
    assert quantized_variants("zai-org/GLM-4.5") == ("zai-org/GLM-4.5-FP8",)  # not -Air-FP8
    assert quantized_variants(f"{CODER}-FP8") == ()
    assert quantized_variants(CODER, "llamacpp") == ()


# -- calibration after a start ----------------------------------------------------------

FAKE_VLLM_LOG = """\
(EngineCore_DP0 pid=1) INFO [core.py:77] Initializing a V1 LLM engine (v0.19.0) with config
(EngineCore_DP0 pid=1) INFO [gpu_model_runner.py:2370] Model loading took 15.2100 GiB and 3.1 seconds
(EngineCore_DP0 pid=1) INFO [gpu_worker.py:298] Available KV cache memory: 17.40 GiB
(EngineCore_DP0 pid=1) INFO [kv_cache_utils.py:1087] GPU KV cache size: 142,528 tokens
(EngineCore_DP0 pid=1) INFO [kv_cache_utils.py:1091] Maximum concurrency for 16,384 tokens per request: 8.70x
(EngineCore_DP0 pid=1) INFO [gpu_model_runner.py:3480] Graph capturing finished in 3 secs, took 0.62 GiB
"""


def test_after_start_records_and_the_next_estimate_uses_the_measured_kv_pool(facts_store):
    h = host()
    s = spec(LLAMA, "--max-model-len", "16384", "--gpu-memory-utilization", "0.45")
    facts = facts_from_config(config("meta-llama__Llama-3.1-8B-Instruct"), key=LLAMA)
    before = sizing_estimate(facts_store, facts.key, engine="vllm", args=s.args, gpu_mib=H100,
                          gpu_name=H100_NAME, version="0.19.0")
    assert before["calibration_id"] is None
    C.after_start(facts_store, s, h, FAKE_VLLM_LOG, 37000)
    cal = C.calibrations_for(facts_store, LLAMA)[0]
    assert cal["gpu_name"] == "H100 80GB" and cal["engine_version"] == "0.19.0"
    assert cal["args_key"] == setup_key("vllm", s.args)
    assert cal["actual"]["process_mib"] == 37000 and cal["actual"]["kv_cache_gib"] == 17.4
    assert cal["estimate"]["kv_cache_gib"] == before["kv_cache_gib"]
    assert set(cal["actual"]["derived"]) == {"activation_gib", "non_torch_gib"}
    after = sizing_estimate(facts_store, facts.key, engine="vllm", args=s.args, gpu_mib=H100,
                         gpu_name=H100_NAME, version="0.19.0")
    assert after["calibration_id"] == cal["id"] and after["calibrated"]
    assert after["weights_gib"] == 15.21
    assert abs(after["kv_cache_gib"] - 17.4) <= 0.01          # the measured pool
    # the start check for the same setup uses it too
    adm = check_start(facts_store, h, s, usage(h, 0), force=False)
    assert abs(adm.estimate["kv_cache_gib"] - 17.4) <= 0.01
    assert any("calibrated from the measurement" in n for n in adm.notes)
    # another setup (fp8 KV) or another engine version does not
    other = sizing_estimate(facts_store, facts.key, engine="vllm",
                         args=(*s.args, "--kv-cache-dtype", "fp8"), gpu_mib=H100,
                         gpu_name=H100_NAME, version="0.19.0")
    assert other["calibration_id"] is None
    newer = sizing_estimate(facts_store, facts.key, engine="vllm", args=s.args, gpu_mib=H100,
                         gpu_name="h100", version="0.21.1")
    assert newer["calibration_id"] is None


def test_after_start_llamacpp_and_never_raises(facts_store):
    h = host()
    s = spec("Qwen/Qwen3-8B", "-c", "8192", "-ngl", "999", engine="llamacpp")
    C.after_start(facts_store, s, h, GGUF_LOG, None)
    cal = C.calibrations_for(facts_store, "Qwen/Qwen3-8B")[0]
    assert cal["actual"]["weights_gib"] == round(4455.33 / 1024, 3)
    facts = facts_from_config(config("Qwen__Qwen3-8B"), key="Qwen/Qwen3-8B")
    got = sizing_estimate(facts_store, facts.key, engine="llamacpp", args=s.args, gpu_mib=H100,
                       gpu_name="H100 80GB")
    assert got["calibrated"] and got["weights_gib"] == round(4455.33 / 1024, 2)
    # broken inputs: logged as an event, never raised
    C.after_start(facts_store, s, None, GGUF_LOG, None)
    C.after_start(facts_store, spec(LLAMA, "--max-model-len", "lots"), h, FAKE_VLLM_LOG, None)
    events = facts_store.query("SELECT action FROM events WHERE action = 'calibration-failed'")
    assert len(events) == 2
    # nothing measured: nothing recorded
    C.after_start(facts_store, spec(LLAMA), h, "no memory lines", None)
    assert len(C.calibrations_for(facts_store, LLAMA)) == 0


# -- one estimate for the CLI and the MCP tool --------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMOD_HOME", str(tmp_path / "home"))
    from gpumod.store import db as dbmod
    from gpumod.store.db import open_store

    st = open_store()
    remember(st, facts_from_config(config("meta-llama__Llama-3.1-8B-Instruct"), key=LLAMA))
    yield st
    st.close()
    dbmod._open.clear()


def _cli(*argv):
    code, out, err = run_cli(*argv)
    assert code == 0, err
    return json.loads(out)


def test_mcp_model_estimate_and_cli_model_estimate_agree(home):
    from gpumod.ops.api import model_estimate

    def both():
        cli = _cli("model", "estimate", LLAMA, "--gpu", "H100 80GB", "--max-model-len",
                   "16384", "--gpu-memory-utilization", "0.45", "--json")
        mcp = model_estimate(LLAMA, "vllm", 16384, "H100-80GB",
                             ["--gpu-memory-utilization", "0.45"])
        return cli, mcp

    cli, mcp = both()
    assert cli == mcp and cli["calibration_id"] is None
    C.after_start(home, spec(LLAMA, "--max-model-len", "16384", "--gpu-memory-utilization",
                             "0.45"), host(), FAKE_VLLM_LOG, None)
    cli, mcp = both()
    assert cli == mcp and cli["calibrated"] and abs(cli["kv_cache_gib"] - 17.4) <= 0.01
    # llama.cpp too
    cli = _cli("model", "estimate", LLAMA, "--engine", "llamacpp", "--gpu-mib", "24564",
               "--max-model-len", "8192", "--cache-type-k", "q8_0", "--json")
    mcp = model_estimate(LLAMA, "llamacpp", 8192, "RTX 4090", ["-ctk", "q8_0"])
    assert cli == mcp and cli["gpu"] == "RTX 4090"


def test_without_gpu_the_cli_and_mcp_size_for_the_active_hosts_card(home):
    """No --gpu: both front ends plan for the active host's first GPU, not a fixed H100."""
    from gpumod.ops.api import model_estimate
    from gpumod.ops.hosts import save_host

    card = GPU(0, "GPU-0", "NVIDIA GeForce RTX 4090", 24564)
    save_host(home, Host("local", "local", gpus=(card,), engine_env={"vllm_version": "0.19.0"}),
              replace=True)
    cli = _cli("model", "estimate", LLAMA, "--max-model-len", "8192", "--json")
    mcp = model_estimate(LLAMA, "vllm", 8192)
    assert cli == mcp
    assert cli["gpu"] == "RTX 4090" and cli["gpu_usable_gib"] < 24
    # a consumer card's engine defaults: 2048 batched tokens, 256 sequences
    assert cli["max_num_batched_tokens"] == 2048 and cli["max_num_seqs"] == 256
