"""On a real GPU: our nvidia-smi parsing agrees with NVML, and per-process memory shows up."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from gpumod.hosts import gpus as gpuinfo
from gpumod.hosts.transports.local import LocalTransport

pytestmark = pytest.mark.gpu


def test_inventory_matches_nvml():
    import pynvml

    snap = gpuinfo.snapshot(LocalTransport())
    assert snap is not None and snap.gpus
    pynvml.nvmlInit()
    try:
        assert len(snap.gpus) == pynvml.nvmlDeviceGetCount()
        for usage in snap.gpus:
            handle = pynvml.nvmlDeviceGetHandleByIndex(usage.gpu.index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            assert usage.gpu.uuid == uuid
            total_mib = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
            assert abs(usage.gpu.memory_mib - total_mib) <= 1
    finally:
        pynvml.nvmlShutdown()


def test_torch_process_memory_is_seen_per_process():
    pytest.importorskip("torch")
    code = ("import torch, time; x = torch.empty(4 * 1024**3, dtype=torch.uint8, device='cuda');"
            "print('ready', flush=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1)
        snap = gpuinfo.snapshot(LocalTransport())
        mine = [p for p in snap.processes if p.pid == proc.pid]
        assert mine, snap.processes
        assert mine[0].used_mib is not None and mine[0].used_mib >= 4096
    finally:
        proc.kill()
        proc.wait()
