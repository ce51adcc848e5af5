"""Side by side with the original Pi (`@mariozechner/pi`, binary `pi-pods`), in one paired run.

The same fake vLLM processes (gpumod.testing fakes behind a real loopback sshd "pod")
are recorded in both tools: ours in gpumod's store (`pi start`), the original's in
`$PI_CONFIG_DIR/pods.json` (pods with `ssh`, `gpus`, `models` {name: {model, port,
gpu, pid}}). Each round runs both commands back to back, alternating which goes
first, and the medians are compared:

- `pi-pods list` vs our `pi list` (the table) and `pi list --json` (one pod,
  --per-pod services; our SSH master connection is opened once first, as any
  earlier command of the user's would have; the original opens one per service);
- `pi-pods --help` vs our `pi --help`, and our read-only listings of local state
  (measured before the services start);
- --pods N: our `pi list --all-pods` over N pods against our one-pod list in the same
  rounds (the growth must be far below N x), and the original's `pi-pods list --pod X`
  run for each pod in turn (it lists one pod per call).

Ours runs from this checkout with its modules compiled first (as `pip install` leaves
them). Run when the machine is quiet; the load average is printed with the figures.

Run:  .venv/bin/python bench/pi_side_by_side.py [--rounds 9] [--per-pod 4] [--pods 10]
Needs sshd (openssh-server) and npm: the original is installed once into
${GPUMOD_BENCH_CACHE:-~/.cache/gpumod-bench}/pi-pods (outside the repository)
through npm as this machine configures it. Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PI_VERSION = "0.70.6"
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
KEY = "bench-key-0123456789abcdef"


def original_pi() -> Path:
    """The original `pi-pods`, installed with npm into a cache folder outside the repo."""
    cache = Path(os.environ.get("GPUMOD_BENCH_CACHE", Path.home() / ".cache/gpumod-bench"))
    folder = cache / "pi-pods"
    binary = folder / "node_modules/.bin/pi-pods"
    if not binary.exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"installing @mariozechner/pi@{PI_VERSION} into {folder} (npm)", file=sys.stderr)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                        str(folder), f"@mariozechner/pi@{PI_VERSION}"], check=True)
    return binary


def timed(argv: list[str], env: dict[str, str], check: Callable[[str], None] | None = None
          ) -> float:
    began = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-800:]}")
    if check:
        check(proc.stdout)
    return took


def paired(rounds: int, ours: Callable[[], float], theirs: Callable[[], float]
           ) -> tuple[float, float]:
    """Medians of both, each round alternating which runs first."""
    a, b = [], []
    for i in range(rounds):
        if i % 2:
            b.append(theirs())
            a.append(ours())
        else:
            a.append(ours())
            b.append(theirs())
    return statistics.median(a), statistics.median(b)


class Pods:
    """N loopback sshd pods with the fake vLLM and nvidia-smi on their PATH."""

    def __init__(self, work: Path, count: int, env: dict[str, str]) -> None:
        from tests.support.sshd import LoopbackSSHD

        from gpumod.testing.fake_nvidia_smi import write_state
        from gpumod.testing.shims import install_shims

        self.env = env
        self.work = work
        self.servers = []
        self.hf_homes = []
        for i in range(count):
            base = work / f"pod{i}"
            server = LoopbackSSHD(base).start()
            state = base / "gpus.json"
            write_state(state, ["h100"] * 8)
            install_shims(server.bin_dir, gpu_state=state)
            hf_home = base / "hf"
            snap = hf_home / "hub" / f"models--{MODEL.replace('/', '--')}" / "snapshots" / "0"
            snap.mkdir(parents=True)
            (snap / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
            self.servers.append(server)
            self.hf_homes.append(hf_home)
        self.deployments: dict[str, list[dict]] = {}

    def register(self) -> None:
        from gpumod.hosts.model import GPU, Host
        from gpumod.ops import hosts as hostops
        from gpumod.store.db import Store

        Path(self.env["GPUMOD_HOME"]).mkdir(parents=True, exist_ok=True)
        store = Store(Path(self.env["GPUMOD_HOME"]) / "gpumod.db")
        gpus = tuple(GPU(i, f"GPU-{i:08d}", "NVIDIA H100 80GB HBM3", 81559) for i in range(8))
        for i, server in enumerate(self.servers):
            hostops.save_host(store, Host(
                name=f"pod{i}", kind="ssh", ssh_command=server.ssh_command, address="127.0.0.1",
                root=str(server.remote_root), gpus=gpus,
                engine_env={"hf_cache": str(self.hf_homes[i])}), replace=False)
        store.close()

    def start(self, per_pod: int) -> None:
        from tests.support.real import free_port

        for i in range(len(self.servers)):
            pod = f"pod{i}"
            rows = self.deployments.setdefault(pod, [])
            for j in range(per_pod):
                name = f"p{i}m{j}"
                # Every pod is a loopback sshd: they share this machine's ports with each
                # other and with other sessions, so each service gets a free one.
                out = pi("start", MODEL, "--name", name, "--pod", pod, "--memory", "10%",
                         "--context", "4k", "--port", str(free_port()), "-q", "--json",
                         env=self.env)
                data = json.loads(out)
                rows.append({"name": name, "port": data["port"], "gpus": data.get("gpus") or [0],
                             "pid": data["pid"]})

    def pods_json(self, folder: Path) -> None:
        """The same processes, recorded the original's way."""
        pods = {}
        for i, server in enumerate(self.servers):
            pod = f"pod{i}"
            pods[pod] = {
                "ssh": server.ssh_command,
                "gpus": [{"id": g, "name": "NVIDIA H100 80GB HBM3", "memory": "81559 MiB"}
                         for g in range(8)],
                "models": {r["name"]: {"model": MODEL, "port": r["port"], "gpu": list(r["gpus"]),
                                       "pid": r["pid"]} for r in self.deployments.get(pod, [])},
            }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pods.json").write_text(json.dumps({"pods": pods, "active": "pod0"}, indent=2))

    def close(self) -> None:
        from gpumod.hosts.sshcmd import parse_ssh_command
        from gpumod.hosts.transports.ssh import SSHTransport

        for rows in self.deployments.values():
            for row in rows:
                subprocess.run([str(PI), "stop", row["name"], "--timeout", "3"], env=self.env,
                               capture_output=True, check=False)
        for server in self.servers:
            SSHTransport(parse_ssh_command(server.ssh_command)).close()
            server.stop()
        kill_leftovers(self.work)


def kill_leftovers(work: Path) -> None:
    """Engines run detached (setsid) from the pods' sshd: whatever a failed start or stop
    left running in the bench's folder is killed here, never anything else."""
    import signal

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == str(work) or cwd.startswith(f"{work}/"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


PI = Path(sys.executable).parent / "pi"


def pi(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([str(PI), *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pi {' '.join(args)} exited {proc.returncode}: {proc.stderr[-800:]}")
    return proc.stdout


def bytecode() -> None:
    """Compile gpumod's modules once, as `pip install` does: this checkout is an editable
    install, and with PYTHONDONTWRITEBYTECODE set (as on this machine) every run of ours
    would otherwise compile all of its source again."""
    import compileall

    import gpumod

    compileall.compile_dir(str(Path(gpumod.__file__).parent), quiet=1)


def median_ms(argv: list[str], env: dict[str, str], rounds: int) -> float:
    return statistics.median(timed(argv, env) for _ in range(rounds)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-pod", type=int, default=4)
    parser.add_argument("--pods", type=int, default=10, help="pods for the fan-out run (0: skip)")
    opts = parser.parse_args()

    node = original_pi()
    bytecode()
    work = Path(tempfile.mkdtemp(prefix="gpumod-sbs-"))
    env = {**os.environ, "GPUMOD_HOME": str(work / "home"), "PI_CONFIG_DIR": str(work / "pi"),
           "PI_API_KEY": KEY}
    # Our store must not pick up PI_CONFIG_DIR (that is the original's folder here).
    ours_env = {k: v for k, v in env.items() if k != "PI_CONFIG_DIR"}
    pods = Pods(work, max(1, opts.pods), ours_env)
    try:
        pods.register()
        pi("pods", "active", "pod0", env=ours_env)
        pods.pods_json(work / "pi")
        load_before = os.getloadavg()
        # Before any engine runs: help and the listings of what is stored locally.
        ours_h, theirs_h = paired(opts.rounds, lambda: timed([str(PI), "--help"], ours_env),
                                  lambda: timed([str(node), "--help"], env))
        local = {}
        for argv in (["pods"], ["pods", "--json"], ["models", "--pod", "local"],
                     ["models", "--pod", "local", "--json"], ["preset", "list"],
                     ["preset", "list", "--json"], ["mode", "list"],
                     ["service", "list", "--pod", "local"], ["list", "--pod", "local"],
                     ["--help"]):
            local[" ".join(argv)] = median_ms([str(PI), *argv], ours_env, opts.rounds)
        # `pi models` on the active pod reads the pod's GPUs now (what fits is what it has):
        # one SSH round trip, not local state
        models_on_pod = median_ms([str(PI), "models"], ours_env, opts.rounds)

        pods.start(opts.per_pod)
        pods.pods_json(work / "pi")
        per_pod = opts.per_pod
        names = [r["name"] for r in pods.deployments["pod0"]]

        def our_json_ok(stdout: str) -> None:
            rows = json.loads(stdout)
            assert len(rows) == per_pod and {r["state"] for r in rows} == {"running"}, stdout

        def our_table_ok(stdout: str) -> None:
            rows = [line.split() for line in stdout.splitlines()]
            mine = [row for row in rows if row and row[0] in names]
            assert len(mine) == per_pod and all("running" in row for row in mine), stdout

        def their_list_ok(stdout: str) -> None:
            assert "All processes verified" in stdout, stdout

        ours_table = lambda: timed([str(PI), "list"], ours_env, our_table_ok)  # noqa: E731
        ours_json = lambda: timed([str(PI), "list", "--json"], ours_env, our_json_ok)  # noqa: E731
        theirs_list = lambda: timed([str(node), "list"], env, their_list_ok)  # noqa: E731
        ours_json()  # open the SSH master once, as a user's earlier command would
        ours_l, theirs_l = paired(opts.rounds, ours_table, theirs_list)
        ours_j, theirs_j = paired(opts.rounds, ours_json, theirs_list)
        print(f"side by side, {opts.rounds} paired rounds (median wall); load average "
              f"{load_before[0]:.2f} at the start")
        print(f"  --help      : pi-pods {theirs_h * 1000:.0f} ms   ours {ours_h * 1000:.0f} ms   "
              f"ratio {theirs_h / ours_h:.1f}x (goal 2.5x)")
        print(f"one loopback pod, {per_pod} fake vLLM services:")
        print(f"  list        : pi-pods {theirs_l:.3f} s   ours {ours_l:.3f} s   "
              f"ratio {theirs_l / ours_l:.1f}x (goal 8x)")
        print(f"  list --json : pi-pods {theirs_j:.3f} s   ours {ours_j:.3f} s   "
              f"ratio {theirs_j / ours_j:.1f}x")
        print(f"our read-only listings of local state, {opts.pods or 1} pods registered, "
              "before the services started (median wall; goal < 100 ms):")
        for command, took in local.items():
            print(f"  pi {command:<28} {took:6.0f} ms" + ("" if took < 100 else "   OVER 100 ms"))
        print(f"  pi models on the active pod (reads its GPUs over SSH): {models_on_pod:.0f} ms")

        if opts.pods > 1:
            def all_ok(stdout: str) -> None:
                rows = json.loads(stdout)
                assert len(rows) == per_pod * opts.pods, stdout
                assert {r["state"] for r in rows} == {"running"}, stdout

            timed([str(PI), "list", "--all-pods", "--json"], ours_env, all_ok)  # every master
            fan, one = [], []
            for _ in range(opts.rounds):
                fan.append(timed([str(PI), "list", "--all-pods", "--json"], ours_env, all_ok))
                one.append(ours_json())
            theirs_all = []
            for _ in range(max(1, opts.rounds // 3)):
                began = time.perf_counter()
                for i in range(opts.pods):
                    timed([str(node), "list", "--pod", f"pod{i}"], env, their_list_ok)
                theirs_all.append(time.perf_counter() - began)
            fan_m, one_m, theirs_m = (statistics.median(x) for x in (fan, one, theirs_all))
            print(f"{opts.pods} pods x {per_pod} services:")
            print(f"  ours `pi list --all-pods --json` {fan_m:.3f} s = {fan_m / one_m:.2f}x our "
                  f"one-pod list ({one_m:.3f} s, same rounds); pods grew {opts.pods}x")
            print(f"  pi-pods, `list --pod X` per pod: {theirs_m:.3f} s   "
                  f"ratio {theirs_m / fan_m:.1f}x")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        return 0
    finally:
        pods.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
