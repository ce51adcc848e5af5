"""Names and values that end in a newline are refused everywhere a regex validates input.

Python's `$` also matches just before a trailing newline, so `re.match(r"^name$", "evil\\n")`
accepts it; a name like that then reaches file names, unit names and remote commands.
"""

from __future__ import annotations

import json

import pytest

from gpumod import validate
from gpumod.errors import ConfigError, UsageError
from tests.support.cli import run_cli

EVIL = "evil\n"


def test_validate_name_and_hf_id_refuse_a_trailing_newline():
    with pytest.raises(UsageError, match="invalid service name"):
        validate.name(EVIL, "service name")
    assert validate.name("evil", "service name") == "evil"
    assert not validate.hf_id("org/model\n")
    assert validate.hf_id("org/model")


@pytest.mark.parametrize(("argv", "code", "fragment"), [
    (["service", "add", EVIL, "--engine", "vllm", "--model", "a/b"], 2, "invalid service name"),
    (["mode", "create", EVIL, "--services", "keep"], 2, "invalid mode name"),
    (["pods", "setup", EVIL, "ssh root@127.0.0.1", "--no-install"], 2, "invalid pod name"),
    # comma lists are split and stripped: "evil" is then simply not a known name
    (["service", "add", "ok", "--engine", "vllm", "--model", "a/b", "--depends-on", EVIL], 3,
     "dependency 'evil' is not a service"),
    (["mode", "create", "m", "--services", EVIL], 3, "unknown service 'evil'"),
    (["pods", "active", EVIL], 3, "unknown pod"),
])
def test_cli_refuses_names_ending_in_a_newline_and_stores_nothing(argv, code, fragment):
    assert run_cli("service", "add", "keep", "--engine", "vllm", "--model", "a/b",
                   prog="gpumod").code == 0
    result = run_cli(*argv, prog="gpumod")
    assert result.code == code, result.output
    assert result.stderr.startswith("error: ") and fragment in result.stderr
    services = json.loads(run_cli("service", "list", "--json", prog="gpumod").stdout)
    assert [s["name"] for s in services] == ["keep"]
    assert json.loads(run_cli("mode", "list", "--json", prog="gpumod").stdout) in ([], {},
                                                                                   {"modes": []})
    assert [h["name"] for h in json.loads(run_cli("pods", "--json").stdout)] == ["local"]


def test_pi_start_refuses_a_name_ending_in_a_newline(monkeypatch):
    monkeypatch.setenv("PI_API_KEY", "sk-test-key-1234567890")
    result = run_cli("start", "Qwen/Qwen2.5-0.5B-Instruct", "--name", EVIL)
    assert result.code == 2 and "invalid service name" in result.stderr


@pytest.mark.parametrize("text", [
    "kind: service\nname: x\nengine: vllm\nmodel: m\ndepends_on: [\"a\\n\"]\n",
    "kind: mode\nname: x\nservices: [\"a\\n\"]\n",
    "kind: service\nname: \"x\\n\"\nengine: vllm\nmodel: m\n",
    "kind: mode\nname: \"x\\n\"\nservices: []\n",
    "kind: service\nname: x\nengine: vllm\nmodel: m\nenv: {\"A\\n\": b}\n",
    "kind: service\nname: x\nengine: vllm\nmodel: m\nhealth_path: \"/h\\n\"\n",
])
def test_presets_refuse_names_ending_in_a_newline(text):
    from gpumod.catalog.presets import parse_preset

    with pytest.raises(ConfigError):
        parse_preset(text, "x.yaml")


def test_docker_settings_refuse_values_ending_in_a_newline():
    from gpumod.engines.docker import check_env, check_mount_source, check_network, parse_config

    for bad in ({"image": "nginx\n", "port": 80}, {"image": "nginx", "port": 80,
                                                    "shm_size": "1g\n"}):
        with pytest.raises(UsageError):
            parse_config(bad)
    with pytest.raises(UsageError):
        check_env({"A\n": "1"})
    with pytest.raises(UsageError):
        check_network("bridge2\n")
    with pytest.raises(UsageError):
        check_mount_source("models\n")


def test_systemd_values_refuse_a_trailing_newline():
    from gpumod.supervise.units import env_file_line, env_pair, sd_path

    with pytest.raises(UsageError):
        env_pair("A\n", "1")
    with pytest.raises(UsageError):
        env_file_line("A\n", "1")
    with pytest.raises(UsageError):
        sd_path("/srv/x\n")


def test_split_gguf_names_must_match_whole():
    from pathlib import Path

    from gpumod.planner.facts.gguf import _SPLIT

    assert _SPLIT.fullmatch(Path("m-00001-of-00002.gguf").name)
    assert not _SPLIT.fullmatch("m-00001-of-00002.gguf\n")
