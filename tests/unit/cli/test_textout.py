"""Listings print through gpumod.cli.textout: rich's table look without importing rich."""

from __future__ import annotations

import io

import pytest

from gpumod.cli.textout import Console, Styled, Table, wrap


def rows(table: Table) -> Table:
    table.add_row("*", "local", Styled("running", "green"), "")
    table.add_row("", "pod-with-a-long-name", Styled("crashed", "red"), "ssh -p 2222 root@1.2.3.4")
    return table


def rich_render(title: str | None = None) -> str:
    from rich import box
    from rich.console import Console as RichConsole
    from rich.table import Table as RichTable

    out = io.StringIO()
    t = RichTable("", "NAME", "STATE", "SSH", title=title, box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False)
    t.add_row("*", "local", "running", "")
    t.add_row("", "pod-with-a-long-name", "crashed", "ssh -p 2222 root@1.2.3.4")
    RichConsole(file=out, width=200, color_system=None, highlight=False).print(t)
    return out.getvalue()


@pytest.mark.parametrize("title", [None, "host dc1"])
def test_a_table_reads_as_rich_printed_it(title: str | None) -> None:
    text = "\n".join(rows(Table("", "NAME", "STATE", "SSH", title=title)).render(200, False))
    assert text + "\n" == rich_render(title)


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, env, coloured in ((io.StringIO(), {}, False), (Tty(), {}, True),
                                  (Tty(), {"NO_COLOR": "1"}, False),
                                  (Tty(), {"TERM": "dumb"}, False),
                                  (io.StringIO(), {"FORCE_COLOR": "1"}, True),
                                  (Tty(), {"FORCE_COLOR": "1", "NO_COLOR": ""}, False)):
        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.delenv("FORCE_COLOR", raising=False)
        monkeypatch.setenv("TERM", "xterm")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr("sys.stdout", stream)
        Console().print(rows(Table("", "NAME", "STATE", "SSH")))
        text = stream.getvalue()
        assert ("\x1b[32mrunning\x1b[0m" in text) is coloured, env
        assert "pod-with-a-long-name" in text and "\x1b[" not in text.replace(
            "\x1b[32m", "").replace("\x1b[31m", "").replace("\x1b[1m", "").replace(
            "\x1b[0m", "")


def test_text_is_never_markup(capsys) -> None:
    Console().print(Styled("[bold]not markup[/] :smile:"))
    assert capsys.readouterr().out == "[bold]not markup[/] :smile:\n"


def test_a_narrow_terminal_wraps_the_widest_columns() -> None:
    table = rows(Table("", "NAME", "STATE", "SSH"))
    lines = table.render(40, False)
    assert max(len(line) for line in lines) <= 40
    start = sum(table.widths(40)[:3]) + 3 * 3  # where the SSH column begins
    second_row = lines[3:]
    assert len(second_row) > 1
    assert "".join(line[start:].replace(" ", "") for line in second_row) == "ssh-p2222root@1.2.3.4"


def test_wrap_keeps_every_character() -> None:
    assert wrap("http://127.0.0.1:8001/v1/chat", 10) == ["http://127", ".0.0.1:800", "1/v1/chat"]
    assert wrap("two words", 4) == ["two", "word", "s"]
    assert wrap("", 5) == [""]


def test_rich_renderables_still_print(capsys) -> None:
    from rich.text import Text

    Console().print(Text.assemble("Proposal: mode ", Styled("code"), " (", Text("fits"), ")"))
    assert capsys.readouterr().out == "Proposal: mode code (fits)\n"
