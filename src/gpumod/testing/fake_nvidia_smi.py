"""A fake `nvidia-smi` that answers from a JSON state file, plus helpers to edit that file.

Run as ``python -m gpumod.testing.fake_nvidia_smi ARGS`` (or through the shim written by
`gpumod.testing.shims.install_shims`). The state file path comes from ``GPUMOD_FAKE_GPU_STATE``::

    {"driver": "550.54.15", "cuda": "12.4",
     "gpus": [{"index": 0, "uuid": "GPU-...", "name": "NVIDIA H100 80GB HBM3",
               "memory_total_mib": 81559, "baseline_used_mib": 0, "reserved_mib": 0}],
     "processes": [{"pid": 123, "name": "python3", "gpu_uuid": "GPU-...", "used_mib": 1000}]}

Like the real tool: ``memory.used`` = baseline + the sum of *live* processes on that GPU
(a pid that no longer exists, or a zombie, is not shown and does not count);
``memory.free`` = total - reserved - used. A missing state file behaves like a machine whose
driver is not loaded (exit 9). Writers take an ``fcntl`` lock on ``<state>.lock`` and replace
the file atomically, so several fake engines can register at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

STATE_ENV = "GPUMOD_FAKE_GPU_STATE"
DEFAULT_DRIVER = "550.54.15"
DEFAULT_CUDA = "12.4"

# Real names and the MiB totals real cards report.
PRESETS: dict[str, dict[str, Any]] = {
    "h100": {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "reserved_mib": 0},
    "a100-40gb": {"name": "NVIDIA A100-SXM4-40GB", "memory_total_mib": 40960, "reserved_mib": 0},
    "rtx4090": {"name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564, "reserved_mib": 0},
    "l4": {"name": "NVIDIA L4", "memory_total_mib": 23034, "reserved_mib": 0},
}
PRESET_ALIASES = {
    "h100-80gb": "h100", "a100": "a100-40gb", "a100-40": "a100-40gb", "4090": "rtx4090",
    "rtx-4090": "rtx4090", "l4-24gb": "l4",
}

DRIVER_FAILURE = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)
INVALID_ARGS = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n"


# ----------------------------------------------------------------------------- state files


def _fake_uuid(seed: str) -> str:
    return "GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, "gpumod-fake/" + seed))


def make_gpu(spec: str | Mapping[str, Any], index: int) -> dict[str, Any]:
    """One GPU entry from a preset name ("h100", "a100-40gb", "rtx4090", "l4") or a dict."""
    if isinstance(spec, str):
        key = PRESET_ALIASES.get(spec.lower(), spec.lower())
        if key not in PRESETS:
            raise ValueError(f"unknown GPU preset {spec!r}; known: {', '.join(PRESETS)}")
        base: dict[str, Any] = dict(PRESETS[key])
    else:
        base = dict(spec)
        if "name" not in base or "memory_total_mib" not in base:
            raise ValueError("a GPU dict needs 'name' and 'memory_total_mib'")
    base.setdefault("index", index)
    base.setdefault("uuid", _fake_uuid(f"{base['name']}/{base['index']}/{time.time_ns()}"))
    base.setdefault("baseline_used_mib", 0)
    base.setdefault("reserved_mib", 0)
    return base


def write_state(path: str | os.PathLike[str], gpus: Sequence[str | Mapping[str, Any]],
                *, driver: str = DEFAULT_DRIVER, cuda: str = DEFAULT_CUDA,
                processes: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write a fresh state file: ``write_state(p, ["h100", "h100"])`` or dicts. Returns the path."""
    path = Path(path)
    state = {
        "driver": driver,
        "cuda": cuda,
        "gpus": [make_gpu(spec, i) for i, spec in enumerate(gpus)],
        "processes": [dict(p) for p in processes],
    }
    with _locked(path):
        _atomic_write(path, state)
    return path


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state as stored (dead processes included). Raises FileNotFoundError if missing."""
    with open(path, encoding="utf-8") as fh:
        state = json.load(fh)
    if not isinstance(state, dict) or not isinstance(state.get("gpus"), list):
        raise ValueError(f"{path}: not a fake GPU state (needs a 'gpus' list)")
    state.setdefault("processes", [])
    state.setdefault("driver", DEFAULT_DRIVER)
    return state


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _atomic_write(path: Path, state: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def pid_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie (a zombie holds no GPU memory)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
        return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}
    except (OSError, IndexError):
        return True


def _resolve_gpus(state: Mapping[str, Any], gpus: Iterable[int | str]) -> list[str]:
    by_index = {str(g["index"]): g["uuid"] for g in state["gpus"]}
    uuids = {g["uuid"] for g in state["gpus"]}
    out: list[str] = []
    for g in gpus:
        key = str(g).strip()
        if key in by_index:
            out.append(by_index[key])
        elif key in uuids:
            out.append(key)
        else:
            raise ValueError(f"no GPU {key!r} in the fake GPU state")
    return out


def _per_gpu(used: int | Sequence[int], n: int) -> list[int]:
    if isinstance(used, int | float):
        return [int(used)] * n
    values = [int(u) for u in used]
    if len(values) != n:
        raise ValueError(f"{len(values)} memory figures for {n} GPUs")
    return values


def _modify(state_path: str | os.PathLike[str], change: Any) -> None:
    path = Path(state_path)
    with _locked(path):
        state = read_state(path)
        state["processes"] = [p for p in state["processes"] if pid_alive(int(p["pid"]))]
        change(state)
        _atomic_write(path, state)


def register_process(state_path: str | os.PathLike[str], pid: int, name: str,
                     gpu_indexes_or_uuids: Iterable[int | str],
                     used_mib_per_gpu: int | Sequence[int]) -> None:
    """Show process `pid` as holding memory on the given GPUs (replaces its earlier entries)."""
    gpus = list(gpu_indexes_or_uuids)

    def change(state: dict[str, Any]) -> None:
        uuids = _resolve_gpus(state, gpus)
        used = _per_gpu(used_mib_per_gpu, len(uuids))
        state["processes"] = [p for p in state["processes"] if int(p["pid"]) != pid]
        for u, mib in zip(uuids, used, strict=True):
            state["processes"].append({"pid": pid, "name": name, "gpu_uuid": u, "used_mib": mib})

    _modify(state_path, change)


def update_process(state_path: str | os.PathLike[str], pid: int,
                   used_mib_per_gpu: int | Sequence[int],
                   gpu_indexes_or_uuids: Iterable[int | str] | None = None) -> None:
    """Change what `pid` holds: on all its GPUs (in registration order) or on the ones given."""

    def change(state: dict[str, Any]) -> None:
        mine = [p for p in state["processes"] if int(p["pid"]) == pid]
        if gpu_indexes_or_uuids is None:
            targets = [p["gpu_uuid"] for p in mine]
        else:
            targets = _resolve_gpus(state, gpu_indexes_or_uuids)
        if not targets:
            raise ValueError(f"pid {pid} is not registered in the fake GPU state")
        used = _per_gpu(used_mib_per_gpu, len(targets))
        name = mine[0]["name"] if mine else "python3"
        for u, mib in zip(targets, used, strict=True):
            entry = next((p for p in mine if p["gpu_uuid"] == u), None)
            if entry is None:
                state["processes"].append(
                    {"pid": pid, "name": name, "gpu_uuid": u, "used_mib": mib})
            else:
                entry["used_mib"] = mib

    _modify(state_path, change)


def unregister_process(state_path: str | os.PathLike[str], pid: int) -> None:
    """Remove `pid`'s entries. A missing state file is not an error (nothing to undo)."""
    if not Path(state_path).exists():
        return

    def change(state: dict[str, Any]) -> None:
        state["processes"] = [p for p in state["processes"] if int(p["pid"]) != pid]

    _modify(state_path, change)


def live_processes(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(p) for p in state.get("processes", []) if pid_alive(int(p["pid"]))]


def gpu_memory(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each GPU with ``used_mib`` and ``free_mib`` as nvidia-smi would report them now."""
    procs = live_processes(state)
    out = []
    for g in state["gpus"]:
        used = int(g.get("baseline_used_mib", 0)) + sum(
            int(p["used_mib"]) for p in procs if p["gpu_uuid"] == g["uuid"])
        total = int(g["memory_total_mib"])
        reserved = int(g.get("reserved_mib", 0))
        out.append({**g, "used_mib": used, "free_mib": max(total - reserved - used, 0)})
    return out


# ----------------------------------------------------------------------------- the command


class _Usage(Exception):
    """Bad arguments: message printed to stdout, exit 2 (like nvidia-smi)."""


def _bus_id(index: int) -> str:
    return f"00000000:{0x18 + 0x10 * index:02X}:00.0"


def _gpu_field(field: str, g: Mapping[str, Any], count: int, driver: str,
               units: bool) -> tuple[str, str]:
    """(header label, value) for one --query-gpu field."""

    def mib(label: str, value: int) -> tuple[str, str]:
        return f"{label} [MiB]", f"{value} MiB" if units else str(value)

    if field == "index":
        return field, str(g["index"])
    if field in {"uuid", "gpu_uuid"}:
        return field, str(g["uuid"])
    if field in {"name", "gpu_name"}:
        return field, str(g["name"])
    if field == "memory.total":
        return mib(field, int(g["memory_total_mib"]))
    if field == "memory.used":
        return mib(field, int(g["used_mib"]))
    if field == "memory.free":
        return mib(field, int(g["free_mib"]))
    if field == "memory.reserved":
        return mib(field, int(g.get("reserved_mib", 0)))
    if field == "driver_version":
        return field, driver
    if field == "count":
        return field, str(count)
    if field in {"pci.bus_id", "gpu_bus_id"}:
        return field, _bus_id(int(g["index"]))
    if field in {"utilization.gpu", "utilization.memory"}:
        return f"{field} [%]", "0 %" if units else "0"
    raise _Usage(f'Field "{field}" is not a valid field to query.\n')


def _app_field(field: str, p: Mapping[str, Any], g: Mapping[str, Any],
               units: bool) -> tuple[str, str]:
    if field == "pid":
        return field, str(p["pid"])
    if field in {"process_name", "name"}:
        return field, str(p["name"])
    if field in {"used_gpu_memory", "used_memory"}:
        return f"{field} [MiB]", f"{p['used_mib']} MiB" if units else str(p["used_mib"])
    if field == "gpu_uuid":
        return field, str(p["gpu_uuid"])
    if field == "gpu_name":
        return field, str(g["name"])
    if field == "gpu_bus_id":
        return field, _bus_id(int(g["index"]))
    raise _Usage(f'Field "{field}" is not a valid field to query.\n')


def _csv(header: list[str], rows: list[list[str]], fmt: set[str]) -> str:
    lines = [] if "noheader" in fmt else [", ".join(header)]
    lines += [", ".join(r) for r in rows]
    return "".join(line + "\n" for line in lines)


def _select(gpus: list[dict[str, Any]], ids: str | None) -> list[dict[str, Any]]:
    if ids is None:
        return gpus
    chosen = []
    for key in ids.split(","):
        key = key.strip()
        match = [g for g in gpus if str(g["index"]) == key or g["uuid"] == key
                 or _bus_id(int(g["index"])) == key]
        if not match:
            raise _Usage(f"No devices were found matching the id \"{key}\".\n")
        chosen += match
    return chosen


def _table(state: Mapping[str, Any], gpus: list[dict[str, Any]],
           procs: list[dict[str, Any]]) -> str:
    """The default summary (driver 550 layout: 91 columns)."""
    width = 91
    rule = "+" + "-" * (width - 2) + "+"
    cells = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"

    def row(a: str, b: str, c: str) -> str:
        return f"|{a:<41}|{b:<24}|{c:<22}|"

    def line(text: str) -> str:
        return "| " + text.ljust(width - 4) + " |"

    driver = str(state.get("driver", DEFAULT_DRIVER))
    cuda = str(state.get("cuda", DEFAULT_CUDA))
    out = [time.strftime("%a %b %d %H:%M:%S %Y"), rule,
           line(f"NVIDIA-SMI {driver:<22} Driver Version: {driver:<14} CUDA Version: {cuda}"),
           "|" + cells[1:],
           row(" GPU  Name                 Persistence-M ", " Bus-Id          Disp.A ",
               " Volatile Uncorr. ECC "),
           row(" Fan  Temp   Perf          Pwr:Usage/Cap ", "           Memory-Usage ",
               " GPU-Util  Compute M. "),
           row("", "", "               MIG M. "),
           cells.replace("-", "=").replace("+", "|", 1)[:-1] + "|"]
    for g in gpus:
        name = str(g["name"])[:30]
        out.append(row(f" {g['index']:>3}  {name:<31}On  ",
                       f"   {_bus_id(int(g['index']))} Off ", f"{'0':>21} "))
        out.append(row(" N/A   30C    P0             70W /  700W ",
                       f"{g['used_mib']:>8}MiB / {g['memory_total_mib']:>6}MiB ",
                       f"{'0%':>8}      Default "))
        out.append(row("", "", f"{'Disabled':>21} "))
        out.append(cells)
    out += ["", rule, line("Processes:"),
            line(" GPU   GI   CI        PID   Type   Process name".ljust(width - 14)
                 + "GPU Memory"),
            line("       ID   ID".ljust(width - 14) + "Usage     "),
            "|" + "=" * (width - 2) + "|"]
    index_of = {g["uuid"]: g["index"] for g in gpus}
    shown = [p for p in procs if p["gpu_uuid"] in index_of]
    if not shown:
        out.append(line(" No running processes found"))
    for p in shown:
        left = f"{index_of[p['gpu_uuid']]:>4}   N/A  N/A {p['pid']:>9}      C   "
        mem = f"{p['used_mib']}MiB"
        room = width - 4 - len(left) - len(mem) - 1
        out.append(line(left + str(p["name"])[:room].ljust(room) + " " + mem))
    out.append(rule)
    return "\n".join(out) + "\n"


def _parse(argv: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in {"--query-gpu", "--query-compute-apps", "--format", "-i", "--id"}:
            if not eq:
                value = next(it, "")
                if not value:
                    raise _Usage(INVALID_ARGS)
            opts["id" if name in {"-i", "--id"} else name.lstrip("-")] = value
        elif arg in {"-L", "--list-gpus"}:
            opts["list"] = True
        elif arg in {"-h", "--help"}:
            opts["help"] = True
        elif arg == "--version":
            opts["version"] = True
        else:
            raise _Usage(INVALID_ARGS)
    if "query-gpu" in opts and "query-compute-apps" in opts:
        raise _Usage(INVALID_ARGS)
    return opts


HELP = """NVIDIA System Management Interface -- v{driver} (gpumod fake)

Supported here: -L/--list-gpus, --query-gpu=FIELDS, --query-compute-apps=FIELDS,
--format=csv[,noheader][,nounits], -i/--id=ID, --version, -h/--help.
"""


def run(argv: Sequence[str], state_path: str | None = None) -> tuple[int, str]:
    """Run the fake command; returns (exit code, stdout text)."""
    try:
        opts = _parse(list(argv))
    except _Usage as exc:
        return 2, str(exc)
    path = state_path if state_path is not None else os.environ.get(STATE_ENV)
    if not path or not Path(path).exists():
        return 9, DRIVER_FAILURE
    state = read_state(path)
    driver = str(state.get("driver", DEFAULT_DRIVER))
    if opts.get("help"):
        return 0, HELP.format(driver=driver)
    if opts.get("version"):
        return 0, (f"NVIDIA-SMI version  : {driver}\nNVML version        : "
                   f"{driver.split('.')[0]}.{driver.split('.', 1)[-1]}\n"
                   f"DRIVER version      : {driver}\nCUDA Version        : "
                   f"{state.get('cuda', DEFAULT_CUDA)}\n")
    try:
        gpus = _select(gpu_memory(state), opts.get("id"))
        procs = live_processes(state)
        if opts.get("list"):
            return 0, "".join(f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})\n"
                              for g in gpus)
        for query in ("query-gpu", "query-compute-apps"):
            if query not in opts:
                continue
            if "format" not in opts:
                raise _Usage(f'"--format" must be specified with "--{query}". '
                             "Please run 'nvidia-smi -h' for help.\n")
            fmt = {f.strip() for f in opts["format"].split(",")}
            if "csv" not in fmt or not fmt <= {"csv", "noheader", "nounits"}:
                raise _Usage(INVALID_ARGS)
            units = "nounits" not in fmt
            fields = [f.strip() for f in opts[query].split(",") if f.strip()]
            if not fields:
                raise _Usage(INVALID_ARGS)
            header: list[str] = []
            rows: list[list[str]] = []
            if query == "query-gpu":
                for g in gpus:
                    pairs = [_gpu_field(f, g, len(gpus), driver, units) for f in fields]
                    header, row = [p[0] for p in pairs], [p[1] for p in pairs]
                    rows.append(row)
                if not gpus:
                    header = [_gpu_field(f, state["gpus"][0], 0, driver, True)[0]
                              for f in fields] if state["gpus"] else fields
            else:
                by_uuid = {g["uuid"]: g for g in gpus}
                # validate the fields even when no process runs
                dummy_p = {"pid": 0, "name": "", "used_mib": 0, "gpu_uuid": ""}
                dummy_g = {"index": 0, "name": ""}
                header = [_app_field(f, dummy_p, dummy_g, True)[0] for f in fields]
                for p in procs:
                    on = by_uuid.get(p["gpu_uuid"])
                    if on is not None:
                        rows.append([_app_field(f, p, on, units)[1] for f in fields])
            # headers keep their "[MiB]" even with nounits, like the real tool
            return 0, _csv(header, rows, fmt)
        return 0, _table(state, gpus, procs)
    except _Usage as exc:
        return 2, str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code, text = run(sys.argv[1:] if argv is None else argv)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        sys.stderr.write(f"fake nvidia-smi: bad state file: {exc}\n")
        return 1
    sys.stdout.write(text)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
