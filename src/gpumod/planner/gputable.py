"""Known GPU cards: memory as nvidia-smi reports it and as CUDA lets a process use it.

vLLM sizes its budget from ``cudaMemGetInfo``'s *total* (what torch calls
``total_memory``), which is a little less than nvidia-smi's ``memory.total``:
the driver keeps some memory back. On an H100 80GB HBM3 vLLM logs
``total_memory=79.19GiB`` while nvidia-smi says 81559 MiB (79.65 GiB).
Cards whose CUDA total was read in a public vLLM log carry it (``cuda_mib``, the
source beside it); for the others the CUDA total uses a typical reserve (0.6 %).

``nvswitch`` marks SXM boards whose GPUs talk over NVSwitch with NVLink SHARP
(Hopper and later): there NCCL reserves about 2 GiB per rank for tensor
parallel (vLLM logs "non-torch forward increase memory: 2.07GiB" at tp=2 on
H100 SXM, 0.25 GiB at tp=1), which PCIe cards do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpumod.errors import UsageError

MIB = 1024 * 1024
GIB = 1024 * MIB
DEFAULT_RESERVE = 0.006


@dataclass(frozen=True)
class GPUModel:
    name: str
    smi_mib: int                 # nvidia-smi memory.total
    cuda_mib: int | None = None  # cudaMemGetInfo total, when known
    aliases: tuple[str, ...] = ()
    nvswitch: bool = False       # SXM with NVSwitch/NVLS: big NCCL buffers under tensor parallel

    @property
    def usable_mib(self) -> int:
        return self.cuda_mib if self.cuda_mib else cuda_total_mib(self.smi_mib)


# name, nvidia-smi MiB, CUDA total MiB (None: derived), aliases.
# CUDA totals read in vLLM logs: H100 79.19 GiB (llm-d-incubation/llm-d-planner accuracy logs),
# RTX 3090 23.58 GiB (vllm-project/vllm#10517), RTX 4090 23.55 GiB (vllm-project/vllm#13061:
# "23.08 GiB" = 0.98 x total).
GPU_MODELS: tuple[GPUModel, ...] = (
    GPUModel("H100 80GB", 81559, 81090, ("h100", "h100-80gb", "h100 sxm", "h100 80gb hbm3",
                                         "nvidia h100 80gb hbm3", "h100-sxm"), nvswitch=True),
    GPUModel("H100 PCIe", 81559, 81090, ("h100 pcie", "nvidia h100 pcie")),
    GPUModel("H100 NVL", 95830, None, ("h100 nvl", "nvidia h100 nvl")),
    GPUModel("H200", 143771, None, ("h200", "nvidia h200", "h200 141gb"), nvswitch=True),
    GPUModel("B200", 183359, None, ("b200", "nvidia b200"), nvswitch=True),
    GPUModel("GH200", 97871, None, ("gh200", "nvidia gh200 480gb")),
    GPUModel("A100 80GB", 81920, None, ("a100", "a100-80gb", "a100 80gb", "a100-sxm4-80gb",
                                        "nvidia a100-sxm4-80gb", "nvidia a100 80gb pcie")),
    GPUModel("A100 40GB", 40960, None, ("a100-40gb", "a100 40gb", "a100-sxm4-40gb",
                                        "nvidia a100-sxm4-40gb", "nvidia a100-pcie-40gb")),
    GPUModel("L40S", 46068, None, ("l40s", "nvidia l40s")),
    GPUModel("L40", 46068, None, ("l40", "nvidia l40")),
    GPUModel("L4", 23034, None, ("l4", "nvidia l4")),
    GPUModel("A10G", 23028, None, ("a10g", "nvidia a10g")),
    GPUModel("A10", 23028, None, ("a10", "nvidia a10")),
    GPUModel("A6000", 49140, None, ("rtx a6000", "nvidia rtx a6000", "a6000")),
    GPUModel("RTX 6000 Ada", 49140, None, ("rtx 6000 ada", "nvidia rtx 6000 ada generation")),
    GPUModel("RTX 5090", 32607, None, ("5090", "rtx 5090", "nvidia geforce rtx 5090")),
    GPUModel("RTX 4090", 24564, 24115, ("4090", "rtx 4090", "nvidia geforce rtx 4090")),
    GPUModel("RTX 3090", 24576, 24146, ("3090", "rtx 3090", "nvidia geforce rtx 3090")),
    GPUModel("T4", 15360, None, ("t4", "tesla t4")),
    GPUModel("V100 32GB", 32768, None, ("v100", "v100 32gb", "tesla v100-sxm2-32gb")),
)


def cuda_total_mib(smi_mib: int) -> int:
    """CUDA-usable total for a card nvidia-smi reports as ``smi_mib``."""
    for model in GPU_MODELS:
        if model.smi_mib == smi_mib and model.cuda_mib:
            return model.cuda_mib
    return int(smi_mib * (1 - DEFAULT_RESERVE))


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower().replace("_", " "))


def lookup(name: str) -> GPUModel | None:
    """A known card by name or alias (case-insensitive; nvidia-smi names work)."""
    wanted = _norm(name)
    for model in GPU_MODELS:
        if wanted == _norm(model.name) or wanted in (_norm(a) for a in model.aliases):
            return model
    return None


def gpu_mib(name: str) -> int:
    """nvidia-smi MiB of a card name, or a clear error listing the known ones."""
    model = lookup(name)
    if model is None:
        known = ", ".join(m.name for m in GPU_MODELS)
        raise UsageError(f"unknown GPU {name!r}",
                         hint=f"known: {known}; or give the size with --gpu-mib N")
    return model.smi_mib


def display_name(smi_name: str, smi_mib: int) -> str:
    """A short label: 'H100 80GB' for 'NVIDIA H100 80GB HBM3'."""
    model = lookup(smi_name)
    if model:
        return model.name
    short = smi_name.replace("NVIDIA ", "").replace("GeForce ", "").strip() or "GPU"
    return f"{short} ({round(smi_mib / 1024)}GB)"


def card(name: str | None, smi_mib: int) -> GPUModel:
    """The known card of this name (else of this size), or an unnamed card of that size."""
    model = lookup(name) if name else None
    if model is None:
        model = next((m for m in GPU_MODELS if m.smi_mib == smi_mib), None)
    return model or GPUModel(name or f"{smi_mib} MiB", smi_mib)
