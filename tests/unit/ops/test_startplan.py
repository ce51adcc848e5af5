"""plan_start: engine, args and GPU count chosen before touching the host."""

from __future__ import annotations

import pytest

from gpumod.errors import CapacityError, UsageError
from gpumod.hosts.model import GPU, Host
from gpumod.ops.endpoints import endpoint_url
from gpumod.ops.services import pick_gpus
from gpumod.ops.startplan import StartRequest, mask, plan_start


def host(n: int = 2, name: str = "NVIDIA H100 80GB HBM3", **kw) -> Host:
    return Host(name="dc1", kind="ssh", ssh_command="ssh root@10.0.0.5", address="10.0.0.5",
                root="/root/.gpumod", gpus=tuple(GPU(i, f"u{i}", name, 81559) for i in range(n)),
                **kw)


def test_known_model_uses_the_catalog_config_and_overrides_replace_values():
    plan = plan_start(StartRequest("openai/gpt-oss-120b", "g", memory="80%", context="64k"),
                      host(2))
    assert plan.engine.name == "vllm" and plan.gpu_count == 1
    assert plan.args.count("--gpu-memory-utilization") == 1
    assert plan.args[plan.args.index("--gpu-memory-utilization") + 1] == "0.8"
    assert plan.args[plan.args.index("--max-model-len") + 1] == "65536"
    assert plan.support == "supported"


def test_custom_args_replace_the_catalog_and_ignore_tuning_flags_with_a_warning():
    plan = plan_start(StartRequest("openai/gpt-oss-120b", "g", memory="50%", gpus=2,
                                   custom_args=["--tensor-parallel-size", "2"]), host(2))
    assert plan.args == ["--tensor-parallel-size", "2"]
    assert plan.gpu_count == 2
    assert any("--memory, --gpus ignored" in w for w in plan.warnings)


def test_unknown_model_possibly_works_with_tp_for_several_gpus():
    plan = plan_start(StartRequest("someone/model", "m", gpus=2), host(2))
    assert plan.support == "possibly works"
    assert plan.args == ["--tensor-parallel-size", "2"] and plan.gpu_count == 2


def test_gguf_paths_and_refs():
    assert plan_start(StartRequest("/m/x.gguf", "x"), host(0)).engine.name == "llamacpp"
    ref = plan_start(StartRequest("o/r:f-Q4.gguf", "x", engine="llamacpp"), host(0))
    assert (ref.hf_repo, ref.gguf_file) == ("o/r", "f-Q4.gguf")
    with pytest.raises(UsageError, match="which GGUF file"):
        plan_start(StartRequest("o/r", "x", engine="llamacpp"), host(0))
    with pytest.raises(UsageError, match=r"serves a \.gguf"):
        plan_start(StartRequest("/m/folder", "x", engine="llamacpp"), host(0))
    with pytest.raises(UsageError, match="invalid GGUF"):
        plan_start(StartRequest("o/r:../../etc.gguf", "x", engine="llamacpp"), host(0))


@pytest.mark.parametrize("model", ["foo bar", "a/b/c", "$(reboot)", "a/b\n", "../x"])
def test_bad_model_ids_are_rejected(model):
    with pytest.raises(UsageError):
        plan_start(StartRequest(model, "m"), host(1))


def test_pick_gpus_prefers_free_ones_and_refuses_too_many():
    h = host(4)
    assert pick_gpus(h, 2, [(0,), (1,)]) == (2, 3)
    assert pick_gpus(h, 1, [(0, 1), (2,)]) == (3,)
    assert pick_gpus(h, 4, [(0,)]) == (0, 1, 2, 3)
    with pytest.raises(CapacityError):
        pick_gpus(h, 5, [])


def test_endpoint_follows_port_map_and_address():
    assert endpoint_url(host(1), 8001) == "http://10.0.0.5:8001/v1"
    mapped = host(1, port_map={"8001": "203.0.113.9:41001"})
    assert endpoint_url(mapped, 8001) == "http://203.0.113.9:41001/v1"
    assert endpoint_url(Host(name="local", kind="local"), 8002) == "http://127.0.0.1:8002/v1"


def test_mask_never_shows_the_key():
    assert mask("short") == "********"
    assert mask("sk-0123456789abcdef") == "********cdef"


def test_local_relative_model_paths_resolve_against_the_current_directory(tmp_path,
                                                                          monkeypatch):
    from gpumod.errors import NotFoundError

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.gguf").write_bytes(b"GGUF")
    (tmp_path / "top.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    local = Host(name="local", kind="local")
    for typed, path in (("./models/tiny.gguf", "models/tiny.gguf"), ("top.gguf", "top.gguf"),
                        ("models/tiny.gguf", "models/tiny.gguf")):
        req = StartRequest(typed, "t")
        plan = plan_start(req, local)
        assert plan.model == req.model == str(tmp_path / path)
        assert plan.engine.name == "llamacpp" and plan.hf_repo is None
    with pytest.raises(NotFoundError, match=r"'nope\.gguf' does not exist in") as missing:
        plan_start(StartRequest("nope.gguf", "t"), local)
    assert missing.value.exit_code == 3 and "OWNER/REPO:FILE.gguf" in missing.value.hint
    # a Hugging Face id stays one, even on local
    assert plan_start(StartRequest("o/r:f.gguf", "t", engine="llamacpp"), local).hf_repo == "o/r"


def test_a_relative_path_on_a_pod_is_refused_with_a_hint(tmp_path, monkeypatch):
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="relative model path") as refused:
        plan_start(StartRequest("./x.gguf", "t"), host(1))
    assert "absolute path" in refused.value.hint
