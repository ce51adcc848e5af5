"""Presets: every shipped file passes the schema; bad files name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumod.catalog import presets
from gpumod.errors import ConfigError
from tests.support.cli import run_cli


def test_shipped_presets_cover_the_seed() -> None:
    names = {(i.preset.kind, i.preset.name) for i in presets.load_all()}
    for service in ("embedding", "reranker", "chat", "asr", "coder", "embedding-code"):
        assert ("service", service) in names
    for mode in ("code", "rag", "speak", "blank"):
        assert ("mode", mode) in names
    services = {n for k, n in names if k == "service"}
    for item in presets.load_all():
        if item.preset.kind == "mode":
            assert set(item.preset.services) <= services, item.preset.name
    engines = {i.preset.engine for i in presets.load_all() if i.preset.kind == "service"}
    assert engines == {"vllm", "llamacpp", "command", "docker"}


@pytest.mark.parametrize("text,match", [
    ("kind: service\nname: x\nengine: vllm\nmodel: m\nport: abc\n", "x.yaml: port:"),
    ("kind: service\nname: x\nengine: vllm\nmodel: m\nprot: 80\n", "x.yaml: prot: Extra"),
    ("kind: service\nname: x\nengine: tgi\nmodel: m\n", "x.yaml: engine:"),
    ("kind: service\nname: x\nengine: llamacpp\nmodel: m\nsleep: l1\n", "x.yaml: sleep:"),
    ("kind: service\nname: x\nengine: docker\nmodel: m\ndocker: {image: a, privileged: true}\n",
     "privileged"),
    ("kind: service\nname: x\nengine: vllm\nmodel: m\nargs: [\"a\\nb\"]\n", "x.yaml: args:"),
    ("kind: mode\nname: x\nservices: [a]\nsleep_on_idle: [b]\n", "sleep_on_idle"),
    ("kind: other\nname: x\n", "kind:"),
    ("kind: [unclosed\n", "not valid YAML"),
])
def test_bad_presets_point_at_the_key(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        presets.parse_preset(text, "x.yaml")


def test_user_preset_overrides_and_a_bad_user_file_fails_alone(gpumod_home: Path) -> None:
    folder = gpumod_home / "presets" / "services"
    folder.mkdir(parents=True)
    (folder / "chat.yaml").write_text("kind: service\nname: chat\nengine: vllm\nmodel: my/m\n")
    assert presets.service_preset("chat").model == "my/m"
    (folder / "bad.yaml").write_text("kind: service\nname: bad\nengine: vllm\n")
    items, broken = presets.scan()
    assert [b.path.name for b in broken] == ["bad.yaml"]
    assert "bad.yaml: model: Field required" in broken[0].error.message
    assert "bad" not in {i.preset.name for i in items}
    assert presets.service_preset("chat").model == "my/m"  # the others stay usable
    with pytest.raises(ConfigError, match=r"bad\.yaml: model: Field required"):
        presets.service_preset("bad")


def test_preset_cli_list_show_and_errors() -> None:
    result = run_cli("preset", "list", prog="gpumod")
    assert result.code == 0 and "reranker" in result.output and "speak" in result.output
    result = run_cli("preset", "show", "chat", prog="gpumod")
    assert result.code == 0 and "engine: vllm" in result.output and "sleep: l1" in result.output
    result = run_cli("preset", "list", "--json", prog="gpumod")
    assert result.code == 0 and '"name": "code"' in result.output


def test_shipped_preset_index_is_current() -> None:
    """`preset list` reads data/presets.json: it must say what the YAML files say."""
    import json

    from gpumod.catalog.preset_index import INDEX

    assert json.loads(INDEX.read_text()) == presets.builtin_index(), \
        "data/presets.json is out of date: run scripts/gen_catalog_data.py"


def test_preset_list_shows_user_presets_over_shipped_ones(gpumod_home: Path) -> None:
    import json

    folder = gpumod_home / "presets" / "services"
    folder.mkdir(parents=True)
    (folder / "chat.yaml").write_text("kind: service\nname: chat\nengine: vllm\nmodel: my/m\n")
    (folder / "mine.yaml").write_text("kind: service\nname: mine\nengine: llamacpp\nmodel: m.gguf\n")
    (folder / "bad.yaml").write_text("kind: service\nname: bad\nengine: vllm\n")
    code, out, err = run_cli("preset", "list", "--json", prog="gpumod")
    assert code == 0, out + err
    rows = json.loads(out)
    by_name = {(r["kind"], r["name"]): r for r in rows}
    assert by_name[("service", "chat")]["model"] == "my/m"
    assert by_name[("service", "chat")]["source"] == "user"
    assert by_name[("service", "mine")]["sleep"] == "none"  # the schema's defaults filled in
    assert by_name[("service", "reranker")]["source"] == "builtin"
    assert ("service", "bad") not in by_name
    assert "warning: skipped" in err and "bad.yaml: model: Field required" in err
    expected = [(i.preset.kind, i.preset.name) for i in presets.scan()[0]]
    assert [(r["kind"], r["name"]) for r in rows] == expected  # the same order as scan()


def test_unknown_preset_exits_non_zero() -> None:
    code, _, err = run_cli("preset", "show", "nope", prog="gpumod")
    assert code == 3
    assert err.startswith("error: unknown preset 'nope'") and "known:" in err
