"""The installed entry points as child processes: both names answer, and `--help` imports
none of the commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.spawns


def test_both_command_names_are_installed():
    import shutil

    for name in ("gpumod", "pi"):
        path = shutil.which(name) or str(__import__("pathlib").Path(sys.executable).parent / name)
        proc = subprocess.run([path, "--help"], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "pods" in proc.stdout and "status" in proc.stdout


def test_help_lists_commands_without_importing_them():
    code = ("import sys; from gpumod.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('rich', 'httpx', 'openai', 'gpumod.cli.pods', 'sqlite3') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
