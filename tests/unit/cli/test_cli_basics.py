"""The CLI surface: both names, help, error boundary, exit codes."""

from __future__ import annotations

from tests.support.cli import run_cli


def test_unknown_pod_is_one_line_error_and_nonzero():
    result = run_cli("pods", "active", "nope")
    assert result.code == 3
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: unknown pod 'nope'"
    assert lines[1].startswith("hint: known: local")
    assert "Traceback" not in result.output


def test_debug_shows_traceback():
    result = run_cli("--debug", "pods", "active", "nope")
    assert result.code == 3
    assert "Traceback" in result.stderr


def test_pods_lists_local_as_active_and_json():
    import json

    result = run_cli("pods", "--json")
    assert result.code == 0
    data = json.loads(result.stdout)
    assert [(h["name"], h["active"]) for h in data] == [("local", True)]
    table = run_cli("pods")
    assert "*" in table.stdout and "local" in table.stdout


def test_remove_local_is_refused():
    result = run_cli("pods", "remove", "local")
    assert result.code == 2
    assert "cannot be removed" in result.stderr


def test_ssh_on_local_returns_the_commands_exit_code():
    result = run_cli("ssh", "exit 7")
    assert result.code == 7


def test_init_is_safe_to_run_twice(gpumod_home):
    first = run_cli("init", prog="gpumod")
    second = run_cli("init", prog="gpumod")
    assert first.code == second.code == 0
    assert "no NVIDIA GPU" in first.stdout or "GPU 0" in first.stdout
    assert (gpumod_home / "gpumod.db").exists()


def test_status_without_gpu_says_so():
    result = run_cli("status", prog="gpumod")
    assert result.code == 0
    assert "no NVIDIA GPU" in result.stdout
