"""Benchmark: SSH multiplexing and CLI start-up (issue 2).

Run:  .venv/bin/python -m bench.ssh_and_startup [--commands 20] [--runs 15]

1. N remote commands over one multiplexed connection (our SSHTransport)
   against a fresh `ssh` per command (no ControlMaster), on a loopback sshd.
2. `gpumod --help` and `pi pods` start-up against `python -c pass` (baseline
   in the same run), medians over --runs.
Prints ratios; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _median_ms(argv: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, env=env)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def bench_ssh(commands: int) -> None:
    from tests.support.sshd import LoopbackSSHD

    from gpumod.hosts.sshcmd import parse_ssh_command
    from gpumod.hosts.transports.ssh import SSHTransport

    with tempfile.TemporaryDirectory() as tmp:
        server = LoopbackSSHD(Path(tmp)).start()
        try:
            target = parse_ssh_command(server.ssh_command)
            fresh = ["ssh", "-o", "StrictHostKeyChecking=accept-new", *target.options,
                     "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "BatchMode=yes",
                     target.destination, "true"]
            subprocess.run(fresh, check=True, capture_output=True)  # learn the host key
            start = time.perf_counter()
            for _ in range(commands):
                subprocess.run(fresh, check=True, capture_output=True)
            fresh_s = time.perf_counter() - start

            transport = SSHTransport(target)
            transport.run(["true"]).check("warm-up")  # opens the master
            start = time.perf_counter()
            for _ in range(commands):
                transport.run(["true"]).check("bench")
            mux_s = time.perf_counter() - start
            transport.close()
        finally:
            server.stop()
    print(f"ssh: {commands} commands, fresh connection each: {fresh_s * 1000 / commands:.1f} ms/cmd")
    print(f"ssh: {commands} commands, multiplexed:           {mux_s * 1000 / commands:.1f} ms/cmd")
    print(f"ssh: multiplexed is {fresh_s / mux_s:.1f}x faster")


def bench_startup(runs: int) -> None:
    import os

    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "GPUMOD_HOME": home}
        subprocess.run([str(bindir / "pi"), "pods"], check=True, capture_output=True, env=env)
        base = _median_ms([sys.executable, "-c", "pass"], runs, env)
        helpme = _median_ms([str(bindir / "gpumod"), "--help"], runs, env)
        pods = _median_ms([str(bindir / "pi"), "pods"], runs, env)
    print(f"startup: python -c pass   {base:.0f} ms (baseline)")
    print(f"startup: gpumod --help    {helpme:.0f} ms  ({helpme / base:.2f}x baseline)")
    print(f"startup: pi pods          {pods:.0f} ms  ({pods / base:.2f}x baseline)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    bench_ssh(args.commands)
    bench_startup(args.runs)


if __name__ == "__main__":
    main()
