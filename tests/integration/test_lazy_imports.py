"""What a command imports is what it pays for at every run: `--help`, `pi list` and the
local listings import only what they need (bench/pi_side_by_side.py measures the speed;
tests never assert timings), `gpumod --help` imports neither Textual, the MCP SDK nor the
gateway's server libraries, and without them the commands say how to install them. Each
check runs the real entry point in a fresh interpreter and reads sys.modules afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.real import free_port

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


# Never needed to list what is recorded and check it on its host.
NOT_FOR_LISTINGS = ("rich", "pydantic", "httpx", "openai", "yaml", "jinja2", "textual", "mcp",
                    "gpumod.catalog.presets", "gpumod.planner", "gpumod.ops.deploy",
                    "gpumod.ops.planning", "gpumod.ops.admission", "gpumod.ops.startplan",
                    "gpumod.ops.preflight", "gpumod.engines.docker", "gpumod.supervise.systemd",
                    "gpumod.hosts.http", "gpumod.ops.lifecycle", "gpumod.ops.modes",
                    "gpumod.ops.multinode")


def run_main(argv: list[str], watch: tuple[str, ...]) -> tuple[str, list[str]]:
    """(stdout, the watched modules that main(argv) imported), in a fresh interpreter."""
    code = (
        "import sys\n"
        "from gpumod.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        f"watch = {watch!r}\n"
        "found = sorted(m for m in sys.modules if m in watch or m.split('.')[0] in watch)\n"
        "sys.stderr.write('IMPORTED=' + ','.join(found) + '\\n')\n")
    proc = python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("IMPORTED=")][-1]
    return proc.stdout, [m for m in line.removeprefix("IMPORTED=").split(",") if m]


@pytest.mark.parametrize("argv", [["--help"], ["-h"]])
def test_top_help_imports_neither_click_nor_the_store(argv: list[str]) -> None:
    out, imported = run_main(argv, ("click", "sqlite3", "gpumod.store", "gpumod.ops", "rich"))
    assert imported == []
    assert out.startswith("Usage: ") and "Commands:" in out and "list " in out


def test_pi_list_checks_services_without_the_planner_or_rich() -> None:
    """A recorded deployment whose process is gone: `pi list` asks its host (here this
    machine) and says so, importing neither the catalog, the planner, the engines' start
    path nor any output library."""
    from gpumod.hosts.model import Host
    from gpumod.ops import services
    from gpumod.spec import ServiceSpec
    from gpumod.store.db import open_store

    store = open_store()
    spec = ServiceSpec(name="gone", host="local", engine="vllm", model="o/m", port=free_port(),
                       state="running")
    services.reserve(store, spec, Host("local", "local"), listening=set(), state="running",
                     port=spec.port)
    for argv in (["list", "--json"], ["list"]):
        out, imported = run_main(argv, NOT_FOR_LISTINGS)
        assert imported == [], argv
        assert "crashed" in out, out
    out, _ = run_main(["list", "--json"], ())
    assert [(r["name"], r["state"]) for r in json.loads(out)] == [("gone", "crashed")]


@pytest.mark.parametrize("argv", [["pods"], ["pods", "--json"], ["preset", "list"],
                                  ["preset", "list", "--json"], ["mode", "list"],
                                  ["models"], ["models", "--json"], ["service", "list"],
                                  ["service", "list", "--json"]])
def test_local_listings_stay_light(argv: list[str]) -> None:
    out, imported = run_main(argv, NOT_FOR_LISTINGS)
    assert imported == [], argv
    assert out.strip()


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["service", "list"]])
def test_nothing_recorded_asks_no_host(argv: list[str]) -> None:
    """With nothing recorded there is nobody to ask: no transport, no status script."""
    out, imported = run_main(argv, ("gpumod.ops.probe", "gpumod.engines", "gpumod.ops.launch",
                                    "gpumod.ops.addresses",
                                    "gpumod.hosts.transports", "subprocess"))
    assert imported == [], argv
    assert out.strip() in ("[]", "no deployments on local", "no services on local")

