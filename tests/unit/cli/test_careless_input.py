"""What people mistype on the newest commands (gateway, export kubernetes, --pods, --alias,
--idle-ttl, mode create --preset, pi list/models): one `error:` line, one `hint:` line, the
documented exit code, no traceback, and nothing already stored is lost or half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import CliResult, run_cli


def refused(result: CliResult, code: int, fragment: str) -> None:
    """The project's error shape: exactly `error: ...` then `hint: ...` on stderr."""
    lines = result.stderr.splitlines()
    assert result.code == code, result.output
    assert len(lines) == 2 and lines[0].startswith("error: ") and \
        lines[1].startswith("hint: "), result.stderr
    assert fragment in lines[0], result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.output


def services() -> dict[str, dict]:
    result = run_cli("service", "list", "--json", prog="gpumod")
    assert result.code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)}


def add(name: str, model: str, *extra: str) -> CliResult:
    return run_cli("service", "add", name, "--engine", "vllm", "--model", model, *extra,
                   prog="gpumod")


# -- click's own errors come through the same boundary -------------------------------------

@pytest.mark.parametrize(("argv", "fragment"), [
    (["gateway", "start", "--port", "0"], "Invalid value for '--port'"),
    (["gateway", "start", "--port", "99999"], "Invalid value for '--port'"),
    (["gateway", "start", "--queue-wait", "-1"], "Invalid value for '--queue-wait'"),
    (["gateway", "run", "--queue-wait", "0"], "Invalid value for '--queue-wait'"),
    (["gateway", "tunnel", "--local-port", "0"], "Invalid value for '--local-port'"),
    (["export", "kubernetes", "--model", "Qwen/Qwen3-8B", "--nodes", "0"],
     "Invalid value for '--nodes'"),
    (["export", "kubernetes", "--model", "Qwen/Qwen3-8B", "--gpus-per-node", "-2"],
     "Invalid value for '--gpus-per-node'"),
    (["export", "kubernetes", "a", "b"], "unexpected extra argument (b)"),
    (["start", "--bogus"], "No such option '--bogus'"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
])
def test_click_usage_errors_are_one_error_line_and_a_hint(argv, fragment):
    result = run_cli(*argv, prog="gpumod")
    refused(result, 2, fragment)
    assert "Usage:" not in result.output
    assert result.stderr.splitlines()[1].startswith("hint: see `gpumod ")
    assert result.stderr.splitlines()[1].endswith(" --help`")


def test_export_output_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "afile").write_text("mine\n")
    result = run_cli("export", "kubernetes", "--preset", "chat", "-o", str(tmp_path / "afile"),
                     prog="gpumod")
    refused(result, 2, "is a file")
    assert (tmp_path / "afile").read_text() == "mine\n"


# -- --idle-ttl and --alias ----------------------------------------------------------------

@pytest.mark.parametrize("ttl", ["10x", "", "-5", "1e5", "99999999999", "10 minutes", "m"])
def test_bad_idle_ttl_is_refused_everywhere_it_is_taken(ttl, monkeypatch):
    monkeypatch.setenv("PI_API_KEY", "k" * 20)
    assert add("keep", "a/b").code == 0
    refused(add("bad", "c/d", "--idle-ttl", ttl), 2, "invalid idle TTL")
    refused(run_cli("gateway", "start", "--idle-ttl", ttl), 2, "invalid idle TTL")
    refused(run_cli("start", "Qwen/Qwen3-8B", "--name", "bad", "--idle-ttl", ttl), 2,
            "invalid idle TTL")
    assert list(services()) == ["keep"]


def test_idle_ttl_never_is_stored_and_zero_refused_as_documented():
    refused(add("now", "a/b", "--idle-ttl", "0"), 2, "after every request")  # llama-swap: 0 = never
    assert add("forever", "c/d", "--idle-ttl", "never").code == 0
    rows = services()
    assert "now" not in rows and rows["forever"]["idle_ttl"] == -1.0


@pytest.mark.parametrize("alias", ["", "a b", "a\nb", "x" * 201, "tab\there"])
def test_malformed_aliases_are_refused(alias):
    refused(add("bad", "a/b", "--alias", alias), 2, "invalid alias")
    assert services() == {}


def test_repeated_aliases_and_the_services_own_names_are_stored_once():
    assert add("coder", "q/coder", "--alias", "dev", "--alias", "dev", "--alias", "coder",
               "--alias", "q/coder", "--alias", "fast").code == 0
    assert services()["coder"]["aliases"] == ["dev", "fast"]
    assert add("solo", "q/solo", "--alias", "solo").code == 0
    assert services()["solo"]["aliases"] == []


@pytest.mark.parametrize(("alias", "owner"), [
    ("keep", "keep"),          # another service's name
    ("a/b", "keep"),           # another service's served model
    ("dev", "keep"),           # another service's alias
])
def test_an_alias_another_service_answers_to_is_refused(alias, owner):
    """The gateway routes a served model or service name before any alias: such an alias
    could never reach the new service, so it is refused, and nothing is stored."""
    assert add("keep", "a/b", "--alias", "dev").code == 0
    before = services()
    result = add("new", "c/d", "--alias", "ok", "--alias", alias)
    refused(result, 4, f"--alias {alias}: the gateway on local already routes that name "
                       f"to '{owner}'")
    assert services() == before


def test_an_alias_used_on_another_host_is_fine():
    from gpumod.hosts.model import Host
    from gpumod.ops import hosts as hostops
    from gpumod.ops.session import open_store

    hostops.save_host(open_store(), Host(name="dc1", kind="ssh", ssh_command="ssh -p 1 r@h"),
                      replace=False)
    assert add("keep", "a/b", "--alias", "dev").code == 0
    store = open_store()
    from gpumod.ops.gateway_routes import claim_aliases

    extra = {"aliases": ["dev", "keep"]}
    claim_aliases(store, "dc1", "other", "c/d", extra)  # dc1's gateway has no such names
    assert extra == {"aliases": ["dev", "keep"]}


# -- pi start --pods: what was typed is checked before any pod is asked -------------------

@pytest.mark.parametrize(("pods", "extra", "fragment"), [
    ("dc1,dc1", [], "--pods names a pod twice: dc1,dc1"),
    ("dc1,", [], "--pods needs two or more pods"),
    ("", [], "--pods needs two or more pods"),
    (",", [], "--pods needs two or more pods"),
    ("dc1 dc2", [], "pod names are separated by commas"),
    ("dc1,dc2", ["--pod", "dc1"], "--pod and --pods exclude each other"),
    ("dc1,dc2", ["--gpus", "1"], "--gpus does not apply with --pods"),
    ("dc1,dc2", ["--engine", "llamacpp"], "multi-node deployments run vLLM"),
    ("dc1,dc2", ["--idle-ttl", "10m"], "--idle-ttl does not go with --pods"),
])
def test_pods_typos_are_refused_before_any_pod_is_looked_up(pods, extra, fragment,
                                                             monkeypatch):
    monkeypatch.setenv("PI_API_KEY", "k" * 20)
    result = run_cli("start", "Qwen/Qwen3-8B", "--name", "big", "--pods", pods, *extra)
    refused(result, 2, fragment)  # not "unknown pod 'dc1'": no pod of that name exists
    assert services() == {}


def test_pods_alias_taken_on_the_head_is_refused_before_any_ssh(monkeypatch):
    """Stored pods whose SSH command leads nowhere: the refusal comes first."""
    from gpumod.hosts.model import GPU, Host
    from gpumod.ops import hosts as hostops
    from gpumod.ops.session import open_store
    from gpumod.spec import ServiceSpec
    from tests.support.store import define_service

    monkeypatch.setenv("PI_API_KEY", "k" * 20)
    store = open_store()
    for name in ("dc1", "dc2"):
        hostops.save_host(store, Host(name=name, kind="ssh", root="/r/.gpumod",
                                      ssh_command="ssh -p 9 r@192.0.2.1",
                                      gpus=(GPU(0, f"GPU-{name}", "NVIDIA H100 80GB HBM3",
                                                81559),)), replace=False)
    define_service(store, ServiceSpec(name="chat", host="dc1", engine="vllm", model="a/b",
                                      port=8001))  # as `service add --pod dc1` records it
    result = run_cli("start", "Qwen/Qwen3-8B", "--name", "big", "--pods", "dc1,dc2",
                     "--alias", "chat")
    refused(result, 4, "--alias chat: the gateway on dc1 already routes that name")
    assert [row["name"] for row in store.query("SELECT name FROM services")] == ["chat"]


# -- export kubernetes ---------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "code", "fragment"), [
    (["--model", ""], 2, "--model is empty"),
    (["--mode", ""], 2, "--mode is empty"),
    (["--preset", ""], 2, "--preset is empty"),
    ([""], 2, "a service name is empty"),
    (["--model", "Qwen/Qwen3-8B", "--name", ""], 2, "--name is empty"),
    (["--model", "Qwen/Qwen3-8B", "--name", "a b"], 2, "invalid deployment name 'a b'"),
    (["--model", "Qwen/Qwen3-8B", "--name", "a/b"], 2, "invalid deployment name 'a/b'"),
    ([], 2, "give exactly one of"),
    (["keep", "--mode", "m"], 2, "got a service name and --mode"),
    (["--preset", "chat", "--model", "Qwen/Qwen3-8B"], 2, "got --preset and --model"),
    (["keep", "--service", "keep"], 2, "a service is named twice"),
    (["keep", "--nodes", "2"], 2, "--nodes, --gpus-per-node and --name go with --model"),
    (["--preset", "chat", "--name", "x"], 2, "go with --model"),
    (["--preset", "nope"], 3, "unknown preset 'nope'"),
    (["nope"], 3, "unknown service 'nope'"),
    (["keep", "-n", "Bad NS"], 2, "invalid namespace 'Bad NS'"),
    (["keep", "-n", ""], 2, "invalid namespace ''"),
    (["keep", "--cache-size", "10x"], 2, "invalid --cache-size '10x'"),
    (["keep", "--shm-size", "-1"], 2, "invalid --shm-size '-1'"),
    (["keep", "--secret-name", ""], 2, "invalid secret name ''"),
    (["keep", "--storage-class", "Fast SSD"], 2, "invalid storage class 'Fast SSD'"),
    (["keep", "--image", ""], 2, "invalid image reference ''"),
    (["keep", "--image", "other=img:1"], 2, "--image names a service that is not exported"),
    (["keep", "--proxy-image", ""], 2, "invalid image reference ''"),
    (["keep", "-o", ""], 2, "-o is empty"),
    (["--model", "../../etc"], 2, "invalid model '../../etc': --model takes a catalog"),
    (["--model", "Qwen/Qwen3-8B:x.gguf"], 2, "invalid model 'Qwen/Qwen3-8B:x.gguf'"),
    (["--model", "/models/x"], 2, "invalid model '/models/x'"),
    (["keep", "--image", "=img:1"], 2, "the service name before '=' is empty"),
    (["keep", "--image", "keep=a:1", "--image", "keep=b:2"], 2, "--image keep= given twice"),
    (["keep", "--image", "a:1", "--image", "b:2"], 2, "--image without SERVICE= given twice"),
])
def test_export_kubernetes_refuses_bad_input(argv, code, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `-o ""` once wrote keep.yaml here
    assert add("keep", "a/b").code == 0
    result = run_cli("export", "kubernetes", *argv, prog="gpumod")
    refused(result, code, fragment)
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == [tmp_path / "gpumod-home"]
    assert list(services()) == ["keep"]


def test_export_into_a_folder_that_cannot_be_made_keeps_nothing_half_written(tmp_path):
    (tmp_path / "afile").write_text("mine\n")
    result = run_cli("export", "kubernetes", "--preset", "rag", "-o",
                     str(tmp_path / "afile" / "sub"), prog="gpumod")
    refused(result, 2, "cannot write the manifests to")
    assert (tmp_path / "afile").read_text() == "mine\n"
    out = tmp_path / "out"
    out.mkdir()
    (out / "chat.yaml").write_text("older export\n")
    ok = run_cli("export", "kubernetes", "--preset", "chat", "-o", str(out), prog="gpumod")
    assert ok.code == 0, ok.output
    assert "kind: Deployment" in (out / "chat.yaml").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["chat.yaml"]  # no temp files left


def test_export_nodes_one_is_a_plain_deployment():
    result = run_cli("export", "kubernetes", "--model", "Qwen/Qwen3-8B", "--nodes", "1",
                     prog="gpumod")
    assert result.code == 0, result.output
    assert "kind: Deployment" in result.stdout and "LeaderWorkerSet" not in result.stdout


# -- --pod, pi list, pi models, mode create --preset ---------------------------------------

@pytest.mark.parametrize("argv", [
    ["list", "--pod", ""], ["models", "--pod", " "], ["gateway", "status", "--pod", ""],
    ["gateway", "tunnel", "--pod", ""], ["list", "--prune", "--pod", ""],
])
def test_an_empty_pod_is_refused_not_taken_for_the_active_one(argv):
    """`--pod "$POD"` with POD unset must not act on the active host."""
    refused(run_cli(*argv), 2, "--pod is empty")


def test_list_pod_and_all_pods_together_are_refused():
    refused(run_cli("list", "--prune", "--all-pods", "--pod", "local"), 2,
            "--pod and --all-pods exclude each other")


def test_list_prune_keeps_definitions_and_says_their_state_once():
    assert add("keep", "a/b").code == 0
    result = run_cli("list", "--prune")
    assert result.code == 0, result.output
    assert "keep: stopped\n" in result.stderr and "stopped: stopped" not in result.stderr
    assert list(services()) == ["keep"]


def test_unknown_pod_for_models_and_list():
    for argv in (["models", "--pod", "nope"], ["list", "--prune", "--pod", "nope"]):
        refused(run_cli(*argv), 3, "unknown pod 'nope'")


@pytest.mark.parametrize(("preset", "hint"), [
    ("nope", "known: "),
    ("", "known: "),
    ("chat", "'chat' is a service preset (use it with `gpumod service add chat --preset "
             "chat`)"),
])
def test_mode_create_with_an_unknown_preset(preset, hint):
    result = run_cli("mode", "create", "m1", "--preset", preset, prog="gpumod")
    refused(result, 3, f"unknown mode preset {preset!r}")
    assert hint in result.stderr
    assert run_cli("mode", "list", "--json", prog="gpumod").stdout.strip() in ("[]", "{}")


def test_mode_create_preset_whose_port_is_taken_hints_what_to_do_and_adds_nothing():
    """`rag` defines services on their preset ports; one taken is a conflict whose hint
    is something the user can do (there is no --port on `mode create`)."""
    from gpumod.catalog.presets import mode_preset, service_preset

    first = mode_preset("rag").services[0]
    port = service_preset(first).port
    assert port, "the rag preset pins its ports"
    assert add("squatter", "a/b", "--port", str(port)).code == 0
    result = run_cli("mode", "create", "m2", "--preset", "rag", prog="gpumod")
    refused(result, 4, f"port {port} on local is already used by squatter")
    assert f"gpumod service add {first} --preset {first} --port N" in result.stderr
    assert "leave --port out" not in result.stderr
    assert list(services()) == ["squatter"]
    assert "m2" not in run_cli("mode", "list", prog="gpumod").stdout



def test_a_one_letter_key_found_in_a_path_says_it_is_too_short(tmp_path, monkeypatch):
    """`PI_API_KEY=k` appears inside any path with a k in it: the refusal says why."""
    model = tmp_path / "kk.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("PI_API_KEY", "k")
    result = run_cli("start", str(model), "--name", "tiny", "--pod", "local")
    refused(result, 2, "a secret value (PI_API_KEY or HF_TOKEN) appears")
    assert "only 1 character(s) long" in result.stderr and "token_hex" in result.stderr
    assert services() == {}



def _unreachable_pod(name: str = "dc1", gpus: int = 1) -> None:
    """A pod record whose SSH leads nowhere (port 9 on loopback refuses at once): a
    command that gets past its input checks fails there (exit 5) instead of starting
    anything."""
    from gpumod.hosts.model import GPU, Host
    from gpumod.ops import hosts as hostops
    from gpumod.ops.session import open_store

    hostops.save_host(open_store(), Host(
        name=name, kind="ssh", root="/r/.gpumod", ssh_command="ssh -p 9 r@127.0.0.1",
        gpus=tuple(GPU(i, f"GPU-{name}-{i}", "NVIDIA H100 80GB HBM3", 81559)
                   for i in range(gpus))), replace=False)


@pytest.mark.parametrize("argv", [
    ["gateway", "start", "--pod", "dc1", "--bind", ""],
    ["service", "add", "s", "--engine", "vllm", "--model", "a/b", "--bind", ""],
])
def test_an_empty_bind_is_refused_not_taken_for_the_default(argv, monkeypatch):
    """`--bind "$ADDR"` with ADDR unset once meant the default address: refused, and
    nothing recorded."""
    monkeypatch.setenv("PI_API_KEY", "k" * 20)
    _unreachable_pod()
    refused(run_cli(*argv, prog="gpumod"), 2, "invalid bind address ''")
    assert services() == {}


def test_gateway_run_with_an_empty_bind_is_refused_before_serving(monkeypatch):
    from gpumod.errors import UsageError
    from gpumod.ops import gateway

    monkeypatch.setenv("PI_API_KEY", "k" * 20)
    with pytest.raises(UsageError, match="invalid bind address ''"):
        gateway.foreground(port=None, bind="", idle_ttl=None, queue_wait=None)


def test_a_service_named_like_another_services_alias_is_refused(monkeypatch):
    """The gateway routes a service name before an alias: `fast` as a new service's name
    would silently take the alias `fast` away from `chat`."""
    monkeypatch.setenv("PI_API_KEY", "k" * 20)
    assert add("chat", "a/b", "--alias", "fast").code == 0
    refused(add("fast", "c/d"), 4, "'fast' is an alias of 'chat' on the gateway of local")
    refused(run_cli("start", "Qwen/Qwen3-8B", "--name", "fast"), 4, "'fast' is an alias")
    assert list(services()) == ["chat"]
    assert services()["chat"]["aliases"] == ["fast"]


def test_service_add_with_empty_gpus_is_refused_not_left_to_the_planner():
    refused(add("g", "a/b", "--gpus", ""), 2, "--gpus is empty")
    refused(add("g", "a/b", "--gpus", " "), 2, "--gpus is empty")
    assert services() == {}


def test_export_into_a_folder_without_write_permission(tmp_path):
    """A read-only folder (root ignores modes, so there /sys/kernel: read-only for root
    too): exit 2, one line naming the folder, nothing written."""
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    target = Path("/sys/kernel") if os.geteuid() == 0 else folder
    assert target.is_dir()
    try:
        result = run_cli("export", "kubernetes", "--preset", "chat", "-o", str(target),
                         prog="gpumod")
        refused(result, 2, f"cannot write the manifests to {target}: Permission denied")
        assert result.stdout == "" and list(folder.iterdir()) == []
        assert not (target / "chat.yaml").exists()
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("name", ["a b", "a\nb", "a/b", "", "-x", "x" * 64])
def test_bad_names_on_the_new_commands(name, monkeypatch):
    monkeypatch.setenv("PI_API_KEY", "k" * 20)
    checks = [
        (run_cli("mode", "create", name, "--preset", "rag", prog="gpumod"), "invalid mode name"),
        (add(name, "a/b", "--idle-ttl", "10m"), "invalid service name"),
        (run_cli("start", "Qwen/Qwen3-8B", "--name", name, "--alias", "x"),
         "invalid service name" if name else "--name is required"),
        (run_cli("start", "Qwen/Qwen3-8B", "--name", name, "--pods", "dc1,dc2"),
         "invalid service name" if name else "--name is required"),
    ]
    for result, fragment in checks:
        if name == "-x" and "No such option" in result.stderr:  # click read it as an option
            refused(result, 2, "No such option")
            continue
        refused(result, 2, fragment)
    assert services() == {}
    assert "rag" not in run_cli("mode", "list", prog="gpumod").stdout
