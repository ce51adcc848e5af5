"""The TUI's command-line parser."""

from __future__ import annotations

import pytest

from gpumod.errors import UsageError
from gpumod.tui.commands import COMMANDS, Command, help_lines, parse


def test_simple_commands() -> None:
    assert parse("/status").name == "status"
    assert parse("  /quit ").name == "quit"
    assert parse("/q").name == "quit"
    assert parse("/?").name == "help"
    switch = parse("/switch code")
    assert (switch.name, switch.target) == ("switch", "code")
    assert parse("/wake chat").target == "chat"


def test_sleep_and_logs_options() -> None:
    assert parse("/sleep chat").level is None
    assert parse("/sleep chat L2").level == "l2"
    assert parse("/logs chat").lines == 200
    assert parse("/logs chat 50").lines == 50


def test_simulate_options() -> None:
    cmd = parse("/simulate code --add reranker,tts --remove chat --context coder=16k")
    assert cmd.target == "code"
    assert cmd.add == ("reranker", "tts")
    assert cmd.remove == ("chat",)
    assert cmd.contexts == {"coder": 16384}
    inline = parse("/simulate --add=a --context=a=4096")
    assert inline.target == "" and inline.add == ("a",) and inline.contexts == {"a": 4096}


@pytest.mark.parametrize(("line", "message"), [
    ("", "empty command"),
    ("status", "commands start with '/'"),
    ("/", "empty command"),
    ("/rm -rf", "unknown command /rm"),
    ("/switch", "usage: /switch MODE"),
    ("/switch a b", "usage: /switch MODE"),
    ("/status now", "/status takes no arguments"),
    ("/sleep chat l3", "unknown sleep level"),
    ("/logs chat many", "LINES must be a number"),
    ("/logs chat 0", "LINES must be a number"),
    ("/simulate", "nothing to simulate"),
    ("/simulate a b", "one mode"),
    ("/simulate code --add", "--add needs a value"),
    ("/simulate code --add ,", "--add needs service names"),
    ("/simulate code --context chat", "--context wants SERVICE=TOKENS"),
    ("/simulate code --context chat=-5", "--context wants SERVICE=TOKENS"),
    ("/simulate code --force", "unknown option"),
    ("/switch 'unclosed", "cannot read the command"),
])
def test_bad_commands(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("?", r"\?")):
        parse(line)


def test_help_lists_every_command() -> None:
    text = "\n".join(help_lines())
    for name in COMMANDS:
        assert f"/{name}" in text


def test_gateway_command_and_its_lines():
    from gpumod.tui.app import describe

    assert parse("/gateway") == Command("gateway")
    assert parse("/gw") == Command("gateway")
    with pytest.raises(UsageError):
        parse("/gateway extra")
    lines = describe(Command("gateway"), {
        "host": "dc1", "state": "running", "url": "http://1.2.3.4:8000/v1", "detail": "",
        "models": [{"name": "chat", "served_model": "org/chat", "state": "sleeping",
                    "in_flight": 0, "queued": 1, "idle_s": None, "ttl_s": 600.0},
                   {"name": "emb", "served_model": "emb", "state": "ready", "in_flight": 2,
                    "queued": 0, "idle_s": 90.2, "ttl_s": None}]})
    text = [line.plain for line in lines]
    assert text[0] == "gateway on dc1: running  http://1.2.3.4:8000/v1"
    assert "sleeping" in text[1] and "org/chat (chat)" in text[1] and "ttl 10m" in text[1]
    assert "queued 1" in text[1]
    assert "in flight 2" in text[2] and "idle 90s" in text[2] and "ttl -" in text[2]
