"""`gpumod service logs` and `pi logs` are one implementation: same output, same exit codes."""

from __future__ import annotations

import os
from pathlib import Path

from gpumod.ops import lifecycle
from gpumod.spec import ServiceSpec
from gpumod.store.db import open_store
from tests.support.cli import run_cli


def both(*args: str):
    return (run_cli("service", "logs", *args, prog="gpumod"), run_cli("logs", *args, prog="pi"))


def test_no_log_yet_is_exit_3_from_both_with_a_hint_to_start_it():
    lifecycle.add_service(open_store(), ServiceSpec("web", "local", "command", "srv", 18123,
                                                    args=("python", "-m", "http.server",
                                                          "{port}")))
    for result in both("web"):
        assert result.code == 3, result.output
        assert result.stderr.splitlines() == [
            "error: no log for web on local yet",
            "hint: it has not run yet: gpumod service start web"]


def test_unknown_service_is_exit_3_from_both():
    for result in both("ghost"):
        assert result.code == 3 and result.stderr.startswith("error: unknown service 'ghost'")


def test_both_print_the_same_last_lines():
    lifecycle.add_service(open_store(), ServiceSpec("web", "local", "command", "srv", 18124,
                                                    args=("python", "-m", "http.server",
                                                          "{port}")))
    folder = Path(os.environ["GPUMOD_HOME"]) / "services" / "web"
    folder.mkdir(parents=True)
    (folder / "service.log").write_text("".join(f"line {i}\n" for i in range(1, 8)))
    service, pi = both("web", "-n", "3")
    assert service.code == pi.code == 0, service.output + pi.output
    assert service.stdout == pi.stdout == "line 5\nline 6\nline 7\n"
    for result in both("web", "-n", "-1"):
        assert result.code == 2  # click's range check, the same on both
