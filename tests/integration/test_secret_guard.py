"""A secret typed into the engine's args is refused, whatever characters the key holds.

The guard used to look for the key inside the JSON text of the manifest, where `"` and `\\`
are escaped and non-ASCII characters become \\uXXXX: such a key passed, and landed in `ps`,
`pi list --json`, gpumod.db and manifest.json. Raw values are compared now, before anything
is recorded.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.test_deploy_local import MODEL, ps_args
from tests.support.cli import run_cli

KEYS = [
    'sk-"quoted"-0123456789',
    "sk-back\\slash-0123456789",
    "sk-it's-0123456789",
    "sk with spaces 0123456789",
    "sk-ünïcødé-密钥-0123456789",
    "sk-plain-0123456789",
]


def leaked(key: str, home) -> list[str]:
    """Every place the key can be seen outside its 0600 secrets file."""
    places = []
    if key in ps_args():
        places.append("ps")
    listing = run_cli("list", "--json", "--all-pods").stdout
    if key in listing or json.dumps(key)[1:-1] in listing:
        places.append("pi list --json")
    for db in home.glob("gpumod.db*"):
        if key.encode() in db.read_bytes():
            places.append(db.name)
    for manifest in home.glob("services/*/manifest.json"):
        if key in manifest.read_text() or json.dumps(key)[1:-1] in manifest.read_text():
            places.append(str(manifest))
    return places


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.usefixtures("local_env")
def test_pi_start_refuses_the_api_key_in_the_engine_args(gpumod_home, monkeypatch, key):
    monkeypatch.setenv("PI_API_KEY", key)
    result = run_cli("start", MODEL, "--name", "q", "--vllm", "--api-key", key)
    assert result.code == 2, result.output
    assert "secret" in result.stderr and key not in result.output
    assert leaked(key, gpumod_home) == []
    assert json.loads(run_cli("list", "--json").stdout) == []


@pytest.mark.parametrize("key", KEYS[:3])
@pytest.mark.usefixtures("local_env")
def test_pi_start_refuses_hf_token_in_the_engine_args(gpumod_home, monkeypatch, key):
    monkeypatch.setenv("HF_TOKEN", key)
    result = run_cli("start", MODEL, "--name", "q", "--vllm", f"--hf-token={key}")
    assert result.code == 2, result.output
    assert leaked(key, gpumod_home) == []


@pytest.mark.parametrize("key", KEYS[:2] + KEYS[4:5])
@pytest.mark.usefixtures("local_env")
def test_service_add_refuses_the_api_key_in_args_or_env(gpumod_home, monkeypatch, key):
    monkeypatch.setenv("PI_API_KEY", key)
    import shlex

    for extra in (["--args", shlex.join(["--api-key", key])], ["--env", f"MY_VAR={key}"]):
        result = run_cli("service", "add", "s", "--engine", "vllm", "--model", MODEL, *extra,
                         prog="gpumod")
        assert result.code == 2, result.output
        assert "secret" in result.stderr and key not in result.output
    assert leaked(key, gpumod_home) == []


def test_the_supervisor_compares_raw_values_too(tmp_path):
    """The last line of defence, under every caller: a launch plan holding a secret."""
    from gpumod.errors import UsageError
    from gpumod.hosts.transports import LocalTransport
    from gpumod.supervise.base import LaunchPlan
    from gpumod.supervise.process import ProcessSupervisor

    for key in KEYS:
        for argv, env in ((("srv", f"--key={key}"), {}), (("srv",), {"X": key})):
            plan = LaunchPlan(service="s", argv=argv, env=env,
                              service_dir=str(tmp_path / "services" / "s"))
            with pytest.raises(UsageError, match="secret"):
                ProcessSupervisor(LocalTransport()).start(plan, {"VLLM_API_KEY": key})
    assert not (tmp_path / "services").exists()
