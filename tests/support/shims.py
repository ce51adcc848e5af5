"""Recording shims for the heavy installers the pod setup script calls.

`install_setup_shims(bin_dir, state_dir)` writes small executables into
`bin_dir` (put first on the remote PATH): `nvidia-smi`, `curl`, `wget`,
`apt-get`, `apt-cache`, `dpkg`, `mount`, `systemctl`, `pip`, `pip3`.
`uv` is NOT put on PATH: the `curl` shim serves an "installer" for
https://astral.sh/uv/install.sh that copies the `uv` shim into
`$UV_INSTALL_DIR`, so the script's uv step really runs.

Every shim appends one JSON line to `state_dir/calls.jsonl`
(`{"tool", "argv", "pid", "secret_env"}`: `secret_env` lists HF_TOKEN /
PI_API_KEY if they were in the shim's environment) and a snapshot of every
process command line on the machine to `state_dir/ps.jsonl`, so tests can
prove what ran and that no secret was ever visible in `ps`.

Each shim does the minimum that lets the script go on:
- `uv venv PATH` makes a real (pip-less) venv, so the script's checks run a
  real Python; `uv pip install --python PY REQ...` writes a fake package
  (`NAME/__init__.py` with `__version__`, and `NAME-VER.dist-info`) into that
  venv, so `importlib.metadata.version()` sees it.
- `apt-get install cuda-toolkit-X-Y` puts an `nvcc` shim into `bin_dir`.

Faults, by files in `state_dir`: `fail-<tool>` (that tool exits non-zero),
`fail-<package>` (uv fails installing it), `hang-<package>` (uv sleeps while
installing it, writing its pid to `hang.pid`), `no-nvidia-smi` is done by
passing `nvidia_smi=False`.

Only the standard library is imported here: the shims import this module.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

TOOLS = ("curl", "wget", "apt-get", "apt-cache", "dpkg", "mount", "systemctl", "pip", "pip3")
SECRET_NAMES = ("HF_TOKEN", "PI_API_KEY")
REPO = Path(__file__).resolve().parents[2]

# What `uv pip install` "installs": dist name -> (import name, default version)
PACKAGES = {
    "torch": ("torch", "2.8.0+cu128"),
    "vllm": ("vllm", "0.11.0"),
    "flashinfer-python": ("flashinfer", "0.3.1"),
    "huggingface-hub": ("huggingface_hub", "0.35.3"),
    "hf-xet": ("hf_xet", "1.1.10"),
    "hf-transfer": ("hf_transfer", "0.1.9"),
    "ray": ("ray", "2.49.2"),
}
NIGHTLY_VLLM = "0.11.1rc2.dev58+g1234567"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class SetupShims:
    """Handle on the shims' state folder: what was called, with which argv."""

    def __init__(self, bin_dir: Path, state_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.state_dir = state_dir

    @property
    def calls_path(self) -> Path:
        return self.state_dir / "calls.jsonl"

    def calls(self, tool: str | None = None) -> list[list[str]]:
        if not self.calls_path.exists():
            return []
        rows = [json.loads(line) for line in self.calls_path.read_text().splitlines() if line]
        return [row["argv"] for row in rows if tool is None or row["tool"] == tool]

    def records(self) -> list[dict]:
        if not self.calls_path.exists():
            return []
        return [json.loads(line) for line in self.calls_path.read_text().splitlines() if line]

    def ps_snapshots(self) -> list[list[str]]:
        path = self.state_dir / "ps.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def fault(self, name: str, kind: str = "fail") -> None:
        (self.state_dir / f"{kind}-{name}").write_text("1")

    def clear(self) -> None:
        self.calls_path.unlink(missing_ok=True)
        (self.state_dir / "ps.jsonl").unlink(missing_ok=True)


def install_setup_shims(bin_dir: Path, state_dir: Path, *, gpus: int = 2,
                        driver: str = "550.54.15", cuda: str = "12.4",
                        nvidia_smi: bool = True) -> SetupShims:
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "gpus.json").write_text(json.dumps({"count": gpus, "driver": driver,
                                                     "cuda": cuda}))
    tools = [*TOOLS, "nvidia-smi"] if nvidia_smi else list(TOOLS)
    for tool in tools:
        _write_shim(bin_dir / tool, tool, bin_dir, state_dir)
    dist = state_dir / "uv-dist"
    dist.mkdir(exist_ok=True)
    _write_shim(dist / "uv", "uv", bin_dir, state_dir)
    return SetupShims(bin_dir, state_dir)


def _write_shim(path: Path, tool: str, bin_dir: Path, state_dir: Path) -> None:
    body = (f"#!{sys.executable}\n"
            "import sys\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "from tests.support.shims import main\n"
            f"sys.exit(main({tool!r}, {str(bin_dir)!r}, {str(state_dir)!r}, sys.argv[1:]))\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(body)
    tmp.chmod(0o755)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- shim side


def _append(path: Path, record: object) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _process_table() -> list[str]:
    rows = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            rows.append(raw.replace(b"\0", b" ").decode("utf-8", "replace").strip())
    return rows


def main(tool: str, bin_dir: str, state_dir: str, argv: list[str]) -> int:
    state = Path(state_dir)
    _append(state / "calls.jsonl", {
        "tool": tool, "argv": argv, "pid": os.getpid(),
        "secret_env": [name for name in SECRET_NAMES if name in os.environ],
    })
    _append(state / "ps.jsonl", _process_table())
    if (state / f"fail-{tool}").exists():
        sys.stderr.write(f"{tool}: simulated failure\n")
        return 100 if tool.startswith("apt") else 1
    handler = _HANDLERS.get(tool)
    return handler(Path(bin_dir), state, argv) if handler else 0


def _nvidia_smi(bin_dir: Path, state: Path, argv: list[str]) -> int:
    info = json.loads((state / "gpus.json").read_text())
    query = next((a.split("=", 1)[1] for a in argv if a.startswith("--query-gpu=")), None)
    if query is None:
        print(f"| NVIDIA-SMI {info['driver']}    Driver Version: {info['driver']}    "
              f"CUDA Version: {info['cuda']}     |")
        for i in range(info["count"]):
            print(f"|   {i}  NVIDIA H100 80GB HBM3          On  |   0MiB /  81559MiB |")
        return 0
    for i in range(info["count"]):
        values = {"index": str(i), "name": "NVIDIA H100 80GB HBM3", "memory.total": "81559",
                  "memory.used": "0", "memory.free": "81559", "driver_version": info["driver"],
                  "uuid": f"GPU-00000000-0000-0000-0000-00000000000{i}",
                  "count": str(info["count"])}
        print(", ".join(values.get(f.strip(), "[N/A]") for f in query.split(",")))
    return 0


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _curl(bin_dir: Path, state: Path, argv: list[str]) -> int:
    url = next((a for a in argv if a.startswith(("http://", "https://"))), "")
    out = _option(argv, "-o") or _option(argv, "-O")
    if "astral.sh/uv" in url:
        source = shlex.quote(str(state / "uv-dist" / "uv"))
        env_log = shlex.quote(str(state / "uv-installer.env"))
        body = ("#!/bin/sh\nset -e\n"
                'dir="${UV_INSTALL_DIR:-$HOME/.local/bin}"\nmkdir -p "$dir"\n'
                f'cp {source} "$dir/uv"\n'
                f'echo "UV_NO_MODIFY_PATH=${{UV_NO_MODIFY_PATH:-}}" > {env_log}\n'
                'echo "installing to $dir"\n')
    elif url.endswith(".deb"):
        body = "fake deb\n"
    else:
        sys.stderr.write(f"curl: (6) shim has no answer for {url}\n")
        return 22
    if out:
        Path(out).write_text(body)
    else:
        sys.stdout.write(body)
    return 0


def _apt_get(bin_dir: Path, state: Path, argv: list[str]) -> int:
    if "install" in argv:
        for pkg in argv[argv.index("install") + 1:]:
            match = re.fullmatch(r"cuda-toolkit-(\d+)-(\d+)", pkg)
            if match:
                version = f"{match[1]}.{match[2]}"
                nvcc = bin_dir / "nvcc"
                nvcc.write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                                f"echo 'Cuda compilation tools, release {version}, "
                                f"V{version}.131'\n")
                nvcc.chmod(0o755)
    return 0


def _apt_cache(bin_dir: Path, state: Path, argv: list[str]) -> int:
    if (state / "cuda-keyring").exists():
        print("Package: " + argv[-1])
        return 0
    sys.stderr.write("E: No packages found\n")
    return 100


def _dpkg(bin_dir: Path, state: Path, argv: list[str]) -> int:
    if "-i" in argv:
        (state / "cuda-keyring").write_text("1")
    return 0


def _mount(bin_dir: Path, state: Path, argv: list[str]) -> int:
    if argv and argv[-1].startswith("/"):
        Path(argv[-1]).mkdir(parents=True, exist_ok=True)
    return 0


def _pip(bin_dir: Path, state: Path, argv: list[str]) -> int:
    sys.stderr.write("pip shim: the setup script is expected to use uv, not pip\n")
    return 1


# -- uv ------------------------------------------------------------------------

_UV_VALUE_OPTIONS = {"--python", "-p", "--extra-index-url", "--index-url", "--index",
                     "--torch-backend", "-r", "--requirement", "-c", "--constraint"}


def _uv(bin_dir: Path, state: Path, argv: list[str]) -> int:
    if argv[:1] == ["--version"]:
        print("uv 0.8.22 (gpumod shim)")
        return 0
    if argv[:2] == ["python", "find"]:
        if (state / "python-3.12").exists():
            print(sys.executable)
            return 0
        sys.stderr.write("error: No interpreter found for Python 3.12\n")
        return 2
    if argv[:2] == ["python", "install"]:
        (state / "python-3.12").write_text(sys.executable)
        print("Installed Python 3.12 (shim)")
        return 0
    if argv[:1] == ["venv"]:
        import venv

        target = [a for a in argv[1:] if not a.startswith("-") and a != _option(argv, "--python")]
        venv.EnvBuilder(with_pip=False, symlinks=True).create(target[-1])
        print(f"Creating virtual environment at: {target[-1]}")
        return 0
    if argv[:2] == ["pip", "install"]:
        return _uv_pip_install(state, argv[2:])
    sys.stderr.write(f"uv shim: unsupported {argv}\n")
    return 2


def _uv_pip_install(state: Path, args: list[str]) -> int:
    python = _option(args, "--python") or _option(args, "-p")
    if not python:
        sys.stderr.write("uv shim: expected --python\n")
        return 2
    nightly = "nightly" in (_option(args, "--extra-index-url") or "")
    reqs: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        if arg in _UV_VALUE_OPTIONS:
            skip_next = True
            continue
        if arg.startswith("-"):
            continue
        reqs.append(arg)
    # Never resolve the symlink: that would be the base interpreter, not the venv.
    venv_dir = Path(python).parent.parent
    site = next(venv_dir.glob("lib/python*/site-packages"), None)
    if not (venv_dir / "pyvenv.cfg").is_file() or site is None:
        sys.stderr.write(f"uv shim: {python} is not in a venv; refusing to write\n")
        return 2
    for req in reqs:
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(.*)", req)
        if not match:
            sys.stderr.write(f"error: invalid requirement {req!r}\n")
            return 2
        name, spec = canonical(match[1]), re.sub(r"^\[[^\]]*\]", "", match[2])  # extras
        if (state / f"fail-{name}").exists():
            sys.stderr.write(f"error: failed to build {name} (simulated)\n")
            return 1
        if (state / f"hang-{name}").exists():
            (state / "hang.pid").write_text(str(os.getpid()))
            print(f"Downloading {name} ...", flush=True)
            time.sleep(120)
        import_name, version = PACKAGES.get(name, (name.replace("-", "_"), "1.0.0"))
        if name == "vllm" and nightly:
            version = NIGHTLY_VLLM
        pinned = re.match(r"\s*(==|>=|~=|===)\s*([0-9][^,;\s]*)", spec)
        if pinned:
            version = pinned[2]
        dist_name = name.replace("-", "_")
        for old in site.glob(f"{dist_name}-*.dist-info"):
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        pkg = site / import_name
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n")
        info = site / f"{dist_name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {version}\n")
        print(f" + {name}=={version}")
    return 0


_HANDLERS = {
    "nvidia-smi": _nvidia_smi, "curl": _curl, "apt-get": _apt_get, "apt-cache": _apt_cache,
    "dpkg": _dpkg, "mount": _mount, "pip": _pip, "pip3": _pip, "uv": _uv,
}
