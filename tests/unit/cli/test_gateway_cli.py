"""`gpumod gateway` and the gateway flags of `service add` / `pi start`: input and errors."""

from __future__ import annotations

from tests.support.cli import run_cli


def test_help_lists_gateway():
    result = run_cli("--help")
    assert result.code == 0 and "gateway" in result.stdout


def test_status_without_a_gateway():
    result = run_cli("gateway", "status")
    assert result.code == 0
    assert result.stdout.startswith("gateway on local: not started")


def test_start_needs_the_key_and_stop_needs_a_gateway():
    result = run_cli("gateway", "start")
    assert result.code == 2 and "error: PI_API_KEY is not set" in result.stderr
    result = run_cli("gateway", "stop")
    assert result.code == 3 and "no gateway was started on local" in result.stderr


def test_a_key_no_client_can_send_is_refused(monkeypatch):
    # HTTP trims header values, so a gateway keyed "KEY " would answer every client 401;
    # the openai client cannot encode a non-ASCII key at all
    for key in ("k" * 20 + " ", " " + "k" * 20, "k" * 20 + "\t", "k" * 20 + "é"):
        monkeypatch.setenv("PI_API_KEY", key)
        result = run_cli("gateway", "start")
        assert result.code == 2, result.output
        assert result.stderr.startswith("error: PI_API_KEY ") and "hint: " in result.stderr
        assert "k" * 20 not in result.output
    assert run_cli("gateway", "status").stdout.startswith("gateway on local: not started")


def test_a_zero_idle_ttl_is_refused(monkeypatch):
    # llama-swap's `ttl: 0` means "never unload"; here it would rest after every request
    monkeypatch.setenv("PI_API_KEY", "k" * 20)
    result = run_cli("gateway", "start", "--idle-ttl", "0")
    assert result.code == 2 and "after every request" in result.stderr
    assert "hint: use 'never'" in result.stderr


def test_bad_bind_and_ttl_are_refused(monkeypatch):
    monkeypatch.setenv("PI_API_KEY", "k" * 20)
    result = run_cli("gateway", "start", "--bind", "1.2.3.4")
    assert result.code == 2 and "invalid bind address" in result.stderr
    result = run_cli("gateway", "start", "--idle-ttl", "soon")
    assert result.code == 2 and "invalid idle TTL 'soon'" in result.stderr


def test_service_add_stores_ttl_and_aliases_and_refuses_bad_ones():
    from gpumod.ops.services import get_service, list_services
    from gpumod.ops.session import open_store

    ok = run_cli("service", "add", "emb", "--engine", "command", "--model", "m",
                 "--args", "python3 -m http.server {port}", "--supervisor", "process",
                 "--idle-ttl", "10m", "--alias", "embedder", "--alias", "text-embedding")
    assert ok.code == 0, ok.output
    extra = get_service(open_store(), "emb").extra
    assert extra["idle_ttl"] == 600.0 and extra["aliases"] == ["embedder", "text-embedding"]
    bad = run_cli("service", "add", "emb2", "--engine", "command", "--model", "m",
                  "--args", "python3 -m http.server {port}", "--idle-ttl", "10 minutes")
    assert bad.code == 2 and "invalid idle TTL" in bad.stderr
    reserved = run_cli("service", "add", "gateway", "--engine", "command", "--model", "m",
                       "--args", "python3 -m http.server {port}", "--supervisor", "process")
    assert reserved.code == 2 and "reserved" in reserved.stderr
    names = [spec.name for spec in list_services(open_store())]
    assert names == ["emb"]  # nothing half-stored by the refused ones


def test_idle_ttl_is_refused_with_pods_and_nothing_is_stored(monkeypatch):
    """A deployment across pods is started by `pi start --pods` only: a rest the gateway
    could not undo is refused before any pod is asked."""
    from gpumod.ops.services import list_services
    from gpumod.ops.session import open_store

    monkeypatch.setenv("PI_API_KEY", "k" * 20)
    result = run_cli("start", "Qwen/Qwen3-8B", "--name", "big", "--pods", "dc1,dc2",
                     "--idle-ttl", "10m")
    assert result.code == 2, result.output
    assert "error: --idle-ttl does not go with --pods" in result.stderr
    assert "hint: drop --idle-ttl" in result.stderr
    assert list_services(open_store()) == []
