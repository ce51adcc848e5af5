"""GPU inventory from nvidia-smi's CSV output (the fake nvidia-smi speaks the same)."""

from __future__ import annotations

from dataclasses import dataclass

from gpumod.errors import RemoteCommandError
from gpumod.hosts.model import GPU
from gpumod.hosts.transports.base import Transport

GPU_FIELDS = "index,uuid,name,memory.total,memory.used,memory.free,driver_version"
APP_FIELDS = "pid,process_name,used_gpu_memory,gpu_uuid"
QUERY_GPUS = ["nvidia-smi", f"--query-gpu={GPU_FIELDS}", "--format=csv,noheader,nounits"]
QUERY_APPS = ["nvidia-smi", f"--query-compute-apps={APP_FIELDS}", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class GPUUsage:
    gpu: GPU
    used_mib: int | None
    free_mib: int | None
    driver: str


@dataclass(frozen=True)
class GPUProcess:
    pid: int
    name: str
    used_mib: int | None
    gpu_uuid: str


@dataclass(frozen=True)
class GPUSnapshot:
    gpus: list[GPUUsage]
    processes: list[GPUProcess]

    def inventory(self) -> list[GPU]:
        return [u.gpu for u in self.gpus]


def _number(text: str) -> int | None:
    text = text.strip()
    if not text or text.startswith("[") or text.lower() in {"n/a", "[n/a]"}:
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


def parse_gpu_csv(text: str) -> list[GPUUsage]:
    rows: list[GPUUsage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 7:
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        # A GPU name never has a comma in practice, but be safe: join the middle.
        index, uuid = parts[0], parts[1]
        total, used, free, driver = parts[-4], parts[-3], parts[-2], parts[-1]
        name = ",".join(parts[2:-4]).strip()
        rows.append(GPUUsage(GPU(int(index), uuid, name, _number(total) or 0),
                             _number(used), _number(free), driver))
    return rows


def parse_apps_csv(text: str) -> list[GPUProcess]:
    apps: list[GPUProcess] = []
    for line in text.splitlines():
        if not line.strip() or "No running" in line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        pid = _number(parts[0])
        if pid is None:
            continue
        apps.append(GPUProcess(pid, ",".join(parts[1:-2]), _number(parts[-2]), parts[-1]))
    return apps


# One round trip: GPUs, a separator, processes. Fixed script, no user input.
SNAPSHOT_SCRIPT = (
    "command -v nvidia-smi >/dev/null 2>&1 || { echo 'nvidia-smi: not found' >&2; exit 127; }\n"
    f"nvidia-smi --query-gpu={GPU_FIELDS} --format=csv,noheader,nounits || exit $?\n"
    "echo '--- apps ---'\n"
    f"nvidia-smi --query-compute-apps={APP_FIELDS} --format=csv,noheader,nounits || true\n"
)


def parse_snapshot(stdout: str) -> GPUSnapshot:
    gpu_text, _, apps_text = stdout.partition("--- apps ---")
    return GPUSnapshot(parse_gpu_csv(gpu_text), parse_apps_csv(apps_text))


def snapshot(transport: Transport, *, timeout: float = 30) -> GPUSnapshot | None:
    """GPUs and processes on a host; None when the host has no nvidia-smi."""
    result = transport.run_script(SNAPSHOT_SCRIPT, timeout=timeout)
    if result.returncode == 127:
        return None
    result.check(f"{transport.label}: nvidia-smi",
                 hint="is the NVIDIA driver loaded? `nvidia-smi` on the host says more")
    try:
        return parse_snapshot(result.stdout)
    except ValueError as exc:
        raise RemoteCommandError(f"{transport.label}: {exc}", returncode=0) from exc
