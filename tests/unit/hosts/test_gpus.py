"""nvidia-smi CSV parsing."""

from __future__ import annotations

from gpumod.hosts.gpus import parse_apps_csv, parse_gpu_csv, parse_snapshot, snapshot
from gpumod.hosts.transports.mock import MockTransport

GPUS = """\
0, GPU-1111, NVIDIA H100 80GB HBM3, 81559, 1024, 80535, 550.54.15
1, GPU-2222, NVIDIA H100 80GB HBM3, 81559, [N/A], [N/A], 550.54.15
"""
APPS = """\
4242, /usr/bin/python3, 70000, GPU-1111
4343, vllm, [N/A], GPU-2222
"""


def test_gpu_rows():
    rows = parse_gpu_csv(GPUS)
    assert [r.gpu.index for r in rows] == [0, 1]
    assert rows[0].gpu.name == "NVIDIA H100 80GB HBM3"
    assert rows[0].gpu.memory_mib == 81559
    assert (rows[0].used_mib, rows[0].free_mib, rows[0].driver) == (1024, 80535, "550.54.15")
    assert rows[1].used_mib is None  # [N/A] is unknown, not zero


def test_app_rows():
    apps = parse_apps_csv(APPS)
    assert [(a.pid, a.used_mib, a.gpu_uuid) for a in apps] == [
        (4242, 70000, "GPU-1111"), (4343, None, "GPU-2222")]


def test_snapshot_one_round_trip():
    transport = MockTransport(lambda argv, _in: (0, GPUS + "--- apps ---\n" + APPS, ""))
    snap = snapshot(transport)
    assert len(transport.calls) == 1
    assert [g.index for g in snap.inventory()] == [0, 1]
    assert len(snap.processes) == 2


def test_no_nvidia_smi_is_none_not_an_error():
    transport = MockTransport(lambda argv, _in: (127, "", "nvidia-smi: not found"))
    assert snapshot(transport) is None


def test_empty_snapshot():
    snap = parse_snapshot("--- apps ---\n")
    assert snap.gpus == [] and snap.processes == []
