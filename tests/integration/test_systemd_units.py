"""`systemd-analyze verify` on the unit of every engine, rendered from real service specs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpumod.spec import ServiceSpec
from gpumod.supervise.units import UnitOptions, render_unit
from tests.support.real import require_real


def analyze() -> str:
    path = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not Path(path).exists():
        require_real("systemd-analyze", "it is not installed (apt-get install systemd)")
    return path


def verify(tmp_path: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    unit = tmp_path / f"gpumod-{name}.service"
    unit.write_text(text)
    return subprocess.run([analyze(), "verify", str(unit)], capture_output=True, text=True,
                          check=False, timeout=60)


def specs(tmp_path: Path) -> list[ServiceSpec]:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    return [
        ServiceSpec("chat", "local", "vllm", "Qwen/Qwen3-4B", 8001, gpus=(0,),
                    args=("--max-model-len", "4096", "--chat-template", "{{ a }} 100% $x"),
                    env={"HF_HOME": "/srv/hf cache"}, sleep_mode="l1"),
        ServiceSpec("coder", "local", "llamacpp", str(gguf), 8002, gpus=(0,)),
        ServiceSpec("router", "local", "llamacpp", str(tmp_path), 8005, sleep_mode="router"),
        ServiceSpec("asr", "local", "command", "whisper", 8003,
                    args=(sys.executable, "-m", "http.server", "{port}", "--bind", "{host}")),
        ServiceSpec("ollama", "local", "docker", "ollama", 8004,
                    extra={"docker": {"image": "ollama/ollama:0.6.8", "port": 11434,
                                      "volumes": ["ollama:/root/.ollama"]}}),
    ]


@pytest.mark.parametrize("scope", ["user", "system"])
def test_units_of_every_engine_pass_systemd_analyze_verify(tmp_path: Path, scope: str) -> None:
    from dataclasses import replace

    from gpumod.hosts.model import Host
    from gpumod.ops.lifecycle import launch_plan

    exe = Path(sys.executable).resolve()  # a binary that exists, standing in for each engine
    host = Host("local", "local", root=str(tmp_path / "root"))
    seen = set()
    for spec in specs(tmp_path):
        plan = launch_plan(spec, host)
        plan = replace(plan, argv=(str(exe), *plan.argv[1:]))
        text = render_unit(plan, UnitOptions(engine=spec.engine, scope=scope,
                                             docker_binary=str(exe)))
        result = verify(tmp_path, spec.name, text)
        assert result.returncode == 0, result.stderr
        # verify exits 0 on warnings too: a warning is a bug in our template
        assert result.stderr.strip() == "", result.stderr
        seen.add(spec.engine)
        if spec.engine == "vllm":
            assert 'Environment="VLLM_SERVER_DEV_MODE=1"' in text
            assert '"--host" "127.0.0.1"' in text and '"--enable-sleep-mode"' in text
            assert '"100%%"' not in text and "100%% $$x" in text
    assert seen == {"vllm", "llamacpp", "command", "docker"}


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check can fail: an unknown directive or a missing binary is reported."""
    result = verify(tmp_path, "bad", "[Service]\nExecStart=/nonexistent/bin/x\nBogus=1\n")
    assert result.returncode != 0 or result.stderr.strip()


@pytest.mark.parametrize("scope", ["user", "system"])
def test_watch_unit_passes_systemd_analyze_verify(tmp_path: Path, scope: str) -> None:
    from gpumod.ops.watch import Policy, watch_unit

    exe = Path(sys.executable).resolve()   # stands in for the installed gpumod
    unit, text = watch_unit("local", Policy(interval=2.5, restart=False), scope=scope,
                            home=str(tmp_path / "gpumod home 100%"), executable=str(exe),
                            path_env="/usr/bin:/bin")
    assert unit == "gpumod-watch@local.service"
    result = verify(tmp_path, "watch@local", text)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert "Restart=on-failure" in text and "KillMode=process" in text
    assert f'Environment="GPUMOD_HOME={tmp_path}/gpumod home 100%%"' in text
    assert f'ExecStart="{exe}" "watch" "--pod" "local" "--interval" "2.5"' in text
    assert '"--no-restart"' in text
