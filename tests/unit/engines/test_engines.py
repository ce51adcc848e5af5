"""Engine drivers: sizes, flag replacement, GPU counts, argv and env."""

from __future__ import annotations

import pytest

from gpumod.engines.base import flag_value, parse_context, parse_memory, replace_flag
from gpumod.engines.registry import get_engine
from gpumod.errors import UsageError
from gpumod.spec import ServiceSpec


@pytest.mark.parametrize("text, tokens", [
    ("4k", 4096), ("32k", 32768), ("64K", 65536), ("128k", 131072), ("256k", 262144),
    ("1m", 1048576), ("8192", 8192), (" 16k ", 16384),
])
def test_context_sizes(text, tokens):
    assert parse_context(text) == tokens


@pytest.mark.parametrize("text", ["", "k", "32kb", "1.5k", "-4k", "0k", "2m", "2000k", "abc",
                                  "12", "4 k x"])
def test_bad_context_sizes_are_rejected(text):
    with pytest.raises(UsageError):
        parse_context(text)


@pytest.mark.parametrize("text, share", [("50%", 0.5), ("90%", 0.9), ("0.3", 0.3), ("75", 0.75),
                                         ("100%", 1.0)])
def test_memory_shares(text, share):
    assert parse_memory(text) == share


@pytest.mark.parametrize("text", ["0%", "150%", "half", "", "-1", "0.001"])
def test_bad_memory_shares_are_rejected(text):
    with pytest.raises(UsageError):
        parse_memory(text)


def test_replace_flag_removes_both_forms_and_keeps_the_rest():
    args = ["--max-model-len", "64000", "--foo", "--max-model-len=8000", "--bar", "x"]
    assert replace_flag(args, ("--max-model-len",), "32768") == [
        "--foo", "--bar", "x", "--max-model-len", "32768"]


def test_replace_flag_handles_aliases_and_short_forms():
    args = ["-c", "2048", "--ctx-size=4096", "-ngl", "99"]
    assert replace_flag(args, ("-c", "--ctx-size"), "8192") == ["-ngl", "99", "-c", "8192"]


def test_flag_value_reads_the_last_value_in_either_form():
    assert flag_value(["-tp", "2", "--tensor-parallel-size=4"],
                      ("--tensor-parallel-size", "-tp")) == "4"
    assert flag_value(["--x"], ("--tensor-parallel-size",)) is None


def test_vllm_gpu_count_is_tp_times_pp_times_dp():
    vllm = get_engine("vllm")
    assert vllm.gpu_count([]) == 1
    assert vllm.gpu_count(["--tensor-parallel-size", "2"]) == 2
    assert vllm.gpu_count(["-tp", "2", "--pipeline-parallel-size=2", "-dp", "2"]) == 8
    assert vllm.gpu_count(["--data-parallel-size", "8", "--enable-expert-parallel"]) == 8
    with pytest.raises(UsageError):
        vllm.gpu_count(["--tensor-parallel-size", "two"])
    with pytest.raises(UsageError):
        vllm.gpu_count(["--tensor-parallel-size", "0"])


def spec(**kw) -> ServiceSpec:
    base = dict(name="s", host="local", engine="vllm", model="Qwen/Qwen3-0.6B", port=8001)
    base.update(kw)
    return ServiceSpec(**base)


def test_vllm_argv_and_env_pin_every_gpu():
    vllm = get_engine("vllm")
    s = spec(gpus=(2, 3), args=("--tensor-parallel-size", "2"))
    assert vllm.argv(s, bind="0.0.0.0") == ["vllm", "serve", "Qwen/Qwen3-0.6B", "--host",
                                            "0.0.0.0", "--port", "8001",
                                            "--tensor-parallel-size", "2"]
    env = vllm.env(s)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "VLLM_API_KEY" not in env  # secrets never in the plan's env
    assert vllm.secret_env_for("k") == {"VLLM_API_KEY": "k"}


def test_vllm_refuses_its_own_port_flag_in_user_args():
    with pytest.raises(UsageError, match="--port"):
        get_engine("vllm").validate(spec(args=("--port", "9000")))
    with pytest.raises(UsageError, match="--host"):
        get_engine("vllm").validate(spec(args=("--host=0.0.0.0",)))


def test_llamacpp_argv_sets_context_alias_and_gpu_layers():
    llama = get_engine("llamacpp")
    s = spec(engine="llamacpp", model="/m/tiny.gguf", gpus=(0,))
    argv = llama.argv(s, bind="127.0.0.1", binary="/opt/llama-server")
    assert argv[:3] == ["/opt/llama-server", "-m", "/m/tiny.gguf"]
    assert argv[argv.index("--alias") + 1] == "tiny"
    assert argv[argv.index("-c") + 1] == "4096"
    assert argv[argv.index("-ngl") + 1] == "999"
    cpu = llama.argv(spec(engine="llamacpp", model="/m/tiny.gguf", args=("-c", "1024")),
                     bind="127.0.0.1")
    assert "-ngl" not in cpu and cpu.count("-c") == 1
    assert llama.secret_env_for("k") == {"LLAMA_API_KEY": "k"}


def test_llamacpp_memory_flag_is_refused_and_router_mode_too():
    llama = get_engine("llamacpp")
    with pytest.raises(UsageError, match="--memory"):
        llama.apply_memory([], 0.5)
    with pytest.raises(UsageError, match="router"):
        llama.validate(spec(engine="llamacpp", args=("--models-dir", "/m")))


def test_command_engine_fills_placeholders_and_needs_port():
    cmd = get_engine("command")
    s = spec(engine="command", model="emb", args=("python", "-m", "srv", "--port", "{port}",
                                                  "--bind={host}", "{{literal}}"))
    assert cmd.argv(s, bind="0.0.0.0") == ["python", "-m", "srv", "--port", "8001",
                                           "--bind=0.0.0.0", "{literal}"]
    with pytest.raises(UsageError, match="placeholder"):
        cmd.validate(spec(engine="command", args=("python", "-m", "srv")))
    with pytest.raises(UsageError, match="bad placeholder"):
        cmd.validate(spec(engine="command", args=("srv", "{port}", "{secret}")))
    with pytest.raises(UsageError, match="needs the server command"):
        cmd.validate(spec(engine="command", args=()))
    assert set(cmd.secret_env_for("k")) == {"API_KEY", "PI_API_KEY"}


def test_error_lines_pick_the_engines_own_errors():
    log = "INFO loading\nINFO fine\nValueError: Free memory on device (10/80 GiB) is less\nbye\n"
    assert get_engine("vllm").error_lines(log) == [
        "ValueError: Free memory on device (10/80 GiB) is less"]
    assert get_engine("vllm").error_lines("just\nlines\n") == ["just", "lines"]


def test_unknown_engine():
    with pytest.raises(UsageError, match="unknown engine"):
        get_engine("tgi")
