"""`gpumod --help` imports neither Textual, the MCP SDK nor the gateway's server libraries;
without them the commands say how to install them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.spawns


def python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUMOD_LLM_BASE_URL": "", "GPUMOD_LLM_MODEL": ""}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False, env=env)


@pytest.mark.parametrize("argv", [["--help"], ["mcp", "--help"], ["tui", "--help"],
                                  ["plan", "--help"], ["gateway", "--help"]])
def test_help_imports_no_front_end_library(argv: list[str]) -> None:
    result = python(
        "import sys\n"
        "from gpumod.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "               ('textual', 'mcp', 'aiohttp', 'uvicorn') or m.startswith('gpumod.gateway'))\n"
        "print('HEAVY=' + ','.join(heavy))\n")
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stdout, result.stdout[-500:]
    assert "Usage:" in result.stdout


@pytest.mark.parametrize(("command", "module"), [("mcp", "mcp"), ("tui", "textual")])
def test_missing_extra_says_how_to_install(command: str, module: str) -> None:
    result = python(
        "import sys\n"
        f"sys.modules[{module!r}] = None  # as if the extra were not installed\n"
        "from gpumod.cli.main import main\n"
        f"main([{command!r}])\n")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"needs the optional package '{module}'" in result.stderr
    assert "hint: pip install 'gpumod[tui,mcp]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_plan_needs_neither_extra() -> None:
    result = python(
        "import sys\n"
        "sys.modules['mcp'] = None\n"
        "sys.modules['textual'] = None\n"
        "from gpumod.cli.main import main\n"
        "main(['plan', 'hello'])\n")
    assert result.returncode == 2
    assert "error: no model to plan with" in result.stderr
