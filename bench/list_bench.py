"""Benchmark: `pi list` over 3 loopback SSH pods with 4 services each.

gpumod: one SSH round trip per host (a status script given every service's
pid file and port), hosts queried in parallel threads, connections reused.
Baseline (the original Pi's way): one fresh SSH connection per service, one
after another, each checking the process and its health endpoint.

Run:  .venv/bin/python bench/list_bench.py [--rounds 5]
Needs sshd (openssh-server). The services are small HTTP servers started by
`pi start --engine command` on each pod, so the figures measure listing, not
the engines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PODS = 3
PER_POD = 4


def pi(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpumod.cli.main", *args], env=env,
                          capture_output=True, text=True, check=False)


def close_masters(servers) -> None:
    from gpumod.hosts.sshcmd import parse_ssh_command
    from gpumod.hosts.transports.ssh import SSHTransport

    for server in servers:
        SSHTransport(parse_ssh_command(server.ssh_command)).close()


def per_service_baseline(servers, services) -> float:
    """Pi's way: a new ssh connection per service (no multiplexing), sequentially."""
    from gpumod.hosts.sshcmd import parse_ssh_command

    began = time.perf_counter()
    for pod_index, root, name, port in services:
        target = parse_ssh_command(servers[pod_index].ssh_command)
        check = (f'pid=$(cat {root}/services/{name}/service.pid) && kill -0 "$pid" && '
                 f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/")
        proc = subprocess.run(["ssh", "-o", "StrictHostKeyChecking=accept-new",
                               "-o", "ControlMaster=no", "-o", "ControlPath=none",
                               "-o", "BatchMode=yes", *target.options, target.destination,
                               check], capture_output=True, text=True, check=False)
        assert proc.stdout.strip() == "200", proc.stderr
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()

    from tests.support.sshd import LoopbackSSHD

    work = Path(tempfile.mkdtemp(prefix="gpumod-bench-"))
    env = {**os.environ, "GPUMOD_HOME": str(work / "home"), "PI_API_KEY": "bench-key-0123456789"}
    env.pop("PI_CONFIG_DIR", None)
    servers = [LoopbackSSHD(work / f"pod{i}").start() for i in range(PODS)]
    services: list[tuple[int, str, str, int]] = []
    try:
        from gpumod.hosts.model import Host
        from gpumod.ops import hosts as hostops
        from gpumod.store.db import Store

        os.environ["GPUMOD_HOME"] = env["GPUMOD_HOME"]
        Path(env["GPUMOD_HOME"]).mkdir(parents=True, exist_ok=True)
        store = Store(Path(env["GPUMOD_HOME"]) / "gpumod.db")
        for i, server in enumerate(servers):
            hostops.save_host(store, Host(name=f"pod{i}", kind="ssh",
                                          ssh_command=server.ssh_command, address="127.0.0.1",
                                          root=str(server.remote_root)), replace=False)
        store.close()
        for i, server in enumerate(servers):
            for j in range(PER_POD):
                name = f"p{i}s{j}"
                # gpumod picks a free port on the pod (all pods share this machine here)
                result = pi("start", f"srv{j}", "--name", name, "--pod", f"pod{i}",
                            "--engine", "command", "--health-path", "/",
                            "-q", "--json", "--vllm", sys.executable, "-m", "http.server",
                            "{port}", "--bind", "127.0.0.1", env=env)
                if result.returncode != 0:
                    print(result.stderr, file=sys.stderr)
                    return 1
                port = json.loads(result.stdout)["port"]
                services.append((i, str(server.remote_root), name, port))

        cold, warm, baseline = [], [], []
        for _ in range(opts.rounds):
            close_masters(servers)
            began = time.perf_counter()
            listed = pi("list", "--all-pods", "--json", env=env)
            cold.append(time.perf_counter() - began)
            rows = json.loads(listed.stdout)
            assert len(rows) == PODS * PER_POD and {r["state"] for r in rows} == {"running"}, \
                listed.stdout + listed.stderr
            began = time.perf_counter()
            pi("list", "--all-pods", "--json", env=env)
            warm.append(time.perf_counter() - began)
            baseline.append(per_service_baseline(servers, services))

        med = statistics.median
        print(f"pi list over {PODS} pods x {PER_POD} services ({opts.rounds} rounds, median)")
        print(f"  gpumod, fresh SSH connections : {med(cold):.3f} s")
        print(f"  gpumod, reused connections    : {med(warm):.3f} s")
        print(f"  one SSH call per service (Pi) : {med(baseline):.3f} s")
        print(f"  ratio Pi-way / gpumod (fresh) : {med(baseline) / med(cold):.1f}x")
        print(f"  ratio Pi-way / gpumod (reused): {med(baseline) / med(warm):.1f}x")
        return 0
    finally:
        for _, _, name, _ in services:
            pi("stop", name, "--timeout", "2", env=env)
        close_masters(servers)
        for server in servers:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
