"""The fake nvidia-smi answers in the real tool's formats, from its state file."""

from __future__ import annotations

import json

import pytest

from gpumod.hosts.gpus import GPU_FIELDS, parse_gpu_csv
from gpumod.testing import fake_nvidia_smi as smi


@pytest.fixture
def state(tmp_path):
    return smi.write_state(tmp_path / "gpus.json", ["h100", "rtx4090"])


def run(state, *args):
    return smi.run(list(args), str(state))


def test_query_gpu_noheader_nounits_matches_real_layout(state):
    code, out = run(state, f"--query-gpu={GPU_FIELDS}", "--format=csv,noheader,nounits")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    uuid0 = json.loads(state.read_text())["gpus"][0]["uuid"]
    assert lines[0] == f"0, {uuid0}, NVIDIA H100 80GB HBM3, 81559, 0, 81559, 550.54.15"
    # and our own parser reads it
    rows = parse_gpu_csv(out)
    assert [(r.gpu.index, r.gpu.name, r.gpu.memory_mib, r.free_mib) for r in rows] == [
        (0, "NVIDIA H100 80GB HBM3", 81559, 81559), (1, "NVIDIA GeForce RTX 4090", 24564, 24564)]


def test_header_and_units_like_real_csv(state):
    code, out = run(state, "--query-gpu=memory.free,name,index,memory.total", "--format=csv")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "memory.free [MiB], name, index, memory.total [MiB]"
    assert lines[1] == "81559 MiB, NVIDIA H100 80GB HBM3, 0, 81559 MiB"
    # nounits drops the unit from values but the header keeps "[MiB]"
    code, out = run(state, "--query-gpu=memory.used", "--format=csv,nounits")
    assert out.splitlines() == ["memory.used [MiB]", "0", "0"]


def test_select_by_id_and_uuid(state):
    uuid1 = json.loads(state.read_text())["gpus"][1]["uuid"]
    code, out = run(state, f"--id={uuid1}", "--query-gpu=index", "--format=csv,noheader")
    assert out.strip() == "1"
    code, out = run(state, "-i", "7", "--query-gpu=index", "--format=csv,noheader")
    assert code == 2 and "No devices were found" in out


@pytest.mark.parametrize("args", [
    ["--bogus"],
    ["--query-gpu=index", "--format=json"],
    ["--query-gpu=index,foo.bar", "--format=csv"],
    ["--query-gpu=index"],
    ["--query-compute-apps=pid,colour", "--format=csv"],
])
def test_bad_arguments_exit_2(state, args):
    code, out = run(state, *args)
    assert code == 2
    assert out.strip()


def test_missing_state_is_a_driver_failure(tmp_path):
    code, out = smi.run(["-L"], str(tmp_path / "nope.json"))
    assert code == 9
    assert "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver" in out
