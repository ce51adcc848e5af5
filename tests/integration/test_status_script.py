"""The host status script (`pi list`'s one round trip), run for real through LocalTransport:
process words, health answers and the port-owner check for many services at once,
with the curl --parallel path and both of its fallbacks."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from gpumod.hosts.transports.local import LocalTransport
from gpumod.ops import probe
from gpumod.supervise.base import LaunchPlan
from gpumod.supervise.process import ProcessSupervisor
from tests.support.real import free_port
from tests.support.stub_server import foreign_http_port

pytestmark = pytest.mark.spawns


@pytest.fixture
def foreign_port():
    """A port answered by this test process: not any service's own group."""
    with foreign_http_port() as port:
        yield port


@pytest.fixture
def services(tmp_path):
    """Start services with the real process supervisor; all are removed afterwards."""
    sup = ProcessSupervisor(LocalTransport())
    started: list[LaunchPlan] = []

    def start(name: str, argv: list[str]) -> str:
        plan = LaunchPlan(name, tuple(argv), {}, service_dir=str(tmp_path / "services" / name))
        sup.start(plan, {})
        started.append(plan)
        return plan.service_dir

    yield start
    for plan in started:
        sup.remove(plan, timeout=5)


def http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def wait_listening(*ports: int) -> None:
    deadline = time.monotonic() + 20
    while not set(ports) <= probe.listening_ports(LocalTransport()):
        assert time.monotonic() < deadline, f"ports {ports} never listened"
        time.sleep(0.1)


def start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]


def test_many_services_in_one_round_trip(tmp_path, services, foreign_port):
    """Leader holds the port, a child holds it, another program answers, nothing answers,
    and the four words for services without a live process: all in one call."""
    own, child = free_port(), free_port()
    leader_dir = services("leader", http_server(own))
    child_dir = services("child", ["sh", "-c", f"{' '.join(http_server(child))} & wait"])
    squatter_dir = services("squatter", ["sleep", "60"])
    quiet_dir = services("quiet", ["sleep", "60"])
    wait_listening(own, child)

    reused = tmp_path / "services" / "reused"  # our pid file, but the pid is another process's
    reused.mkdir(parents=True)
    (reused / "service.pid").write_text(f"{os.getpid()}\n")
    (reused / "service.pidstart").write_text("1\n")
    mine = tmp_path / "services" / "mine"      # the same pid with its real start time
    mine.mkdir()
    (mine / "service.pid").write_text(f"{os.getpid()}\n")
    (mine / "service.pidstart").write_text(start_time(os.getpid()) + "\n")
    gone = tmp_path / "services" / "gone"      # a manifest, no pid file, no stop marker
    gone.mkdir()
    (gone / "manifest.json").write_text("{}")
    stopped = tmp_path / "services" / "stopped"
    stopped.mkdir()
    (stopped / "manifest.json").write_text("{}")
    (stopped / "stopped").write_text("")
    missing = tmp_path / "services" / "missing"

    dead_port = free_port()
    items = [(leader_dir, own, "/", "127.0.0.1"), (child_dir, child, "/", "127.0.0.1"),
             (squatter_dir, foreign_port, "/", "127.0.0.1"),
             (quiet_dir, dead_port, "/", "127.0.0.1"),
             (str(reused), dead_port, "/", "127.0.0.1"), (str(mine), dead_port, "/", "127.0.0.1"),
             (str(gone), dead_port, "/", "127.0.0.1"), (str(stopped), dead_port, "/", "127.0.0.1"),
             (str(missing), dead_port, "/", "127.0.0.1")]
    found = probe.probe_host(LocalTransport(), items)
    got = {Path(k).name: (v.process, v.http, v.owner) for k, v in found.items()}
    assert got == {
        "leader": ("alive", 200, True),
        "child": ("alive", 200, True),         # found by the process-group scan
        "squatter": ("alive", 200, False),     # another program answers on its port
        "quiet": ("alive", 0, None),           # nothing answers: no owner question
        "reused": ("dead", 0, None),           # the pid lives, but it is not our process
        "mine": ("alive", 0, None),
        "gone": ("gone", 0, None),
        "stopped": ("stopped", 0, None),
        "missing": ("missing", 0, None),
    }
    assert found[leader_dir].pid is not None and found[str(missing)].pid is None


def tools_bin(tmp_path: Path, *names: str) -> Path:
    """A PATH folder with only these programs (links to the real ones)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name in names:
        real = os.path.realpath(sys.executable) if name == "python3" else shutil.which(name)
        assert real, name
        (folder / name).symlink_to(real)
    return folder


def owner_and_codes(services, foreign_port, monkeypatch, path: str
                    ) -> dict[str, tuple[str, int, bool | None]]:
    """Status of a server holding its own port and of a service whose port another
    program answers, asked with PATH set to `path`."""
    port = free_port()
    own = services("own", http_server(port))
    other = services("other", ["sleep", "60"])
    wait_listening(port)
    with monkeypatch.context() as m:
        m.setenv("PATH", path)
        found = probe.probe_host(LocalTransport(), [(own, port, "/", "127.0.0.1"),
                                                    (other, foreign_port, "/", "127.0.0.1")])
    return {Path(k).name: (v.process, v.http, v.owner) for k, v in found.items()}


def test_without_curl_python_answers(tmp_path, services, foreign_port, monkeypatch):
    folder = tools_bin(tmp_path, "sh", "cat", "awk", "ls", "python3")
    got = owner_and_codes(services, foreign_port, monkeypatch, str(folder))
    assert got == {"own": ("alive", 200, True), "other": ("alive", 200, False)}


def test_a_curl_without_parallel_falls_back_to_one_probe_each(tmp_path, services, foreign_port,
                                                             monkeypatch):
    """curl before 7.66 refuses --parallel (exit 2, nothing on stdout)."""
    real = shutil.which("curl")
    assert real
    folder = tmp_path / "oldcurl"
    folder.mkdir()
    (folder / "curl").write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case $a in --parallel|-Z) '
        'echo "curl: option --parallel: is unknown" >&2; exit 2 ;; esac; done\n'
        f'exec {real} "$@"\n')
    (folder / "curl").chmod(0o755)
    got = owner_and_codes(services, foreign_port, monkeypatch,
                          f"{folder}{os.pathsep}{os.environ['PATH']}")
    assert got == {"own": ("alive", 200, True), "other": ("alive", 200, False)}


def test_status_script_is_shellcheck_clean(tmp_path):
    import subprocess

    from tests.support.real import require_real

    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        require_real("shellcheck", "it is not installed (apt-get install shellcheck)")
    script = tmp_path / "status.sh"
    script.write_text("#!/bin/sh\n" + probe.STATUS_SCRIPT)
    result = subprocess.run([shellcheck, "--severity=style", "-s", "sh", str(script)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
