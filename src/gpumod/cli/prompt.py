"""`pi prompt NAME "MESSAGE"`: test a deployment with an agentic prompt.

Streams the model's thinking, tool calls, tool results and answer, labelled;
`--json` prints one JSON event per line instead; `-i` keeps a conversation
going until Ctrl+D.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from gpumod.cli.common import pod_option
from gpumod.errors import UsageError


@click.command("prompt", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, metavar='NAME "MESSAGE"')
@pod_option
@click.option("--max-turns", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Stop after this many model turns.")
@click.option("--no-tools", is_flag=True, help="Do not offer the ls/read/glob/rg tools.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON event per line.")
@click.option("-i", "--interactive", is_flag=True,
              help="Keep the conversation going; Ctrl+D to leave.")
@click.option("--base-url", metavar="URL",
              help="Any OpenAI-compatible endpoint (…/v1) instead of a named deployment.")
@click.option("--model", "model_id", metavar="ID",
              help="Model id to ask for (default: the deployment's, or the endpoint's first).")
@click.option("--api", type=click.Choice(["auto", "chat", "responses"]), default="auto",
              show_default=True,
              help="Chat Completions, or the Responses API (auto: responses for gpt-oss).")
def prompt(args: tuple[str, ...], pod: str | None, max_turns: int, no_tools: bool,
           as_json: bool, interactive: bool, base_url: str | None, model_id: str | None,
           api: str) -> None:
    """Ask a deployment something, letting it use read-only file tools.

    \b
    pi prompt qwen "What is 2+2?"
    pi prompt qwen "Read README.md and summarize"
    pi prompt --base-url http://127.0.0.1:8080/v1 "hi"
    The API key comes from PI_API_KEY. Tools read files under the current directory only.
    """
    from gpumod.ops.prompt import PromptRequest, open_prompt

    name, message = _split_args(args, base_url is not None, interactive)
    session = open_prompt(PromptRequest(name=name, pod=pod, base_url=base_url, model=model_id,
                                        api=api, max_turns=max_turns, tools=not no_tools))
    agent = session.agent
    render = _JsonRenderer() if as_json else _RichRenderer()
    render(session.start)
    if message is not None:
        for event in agent.run(message):
            render(event)
    if not interactive:
        return
    ask = "> " if sys.stdin.isatty() and not as_json else ""
    while True:
        try:
            line = input(ask)
        except EOFError:
            break
        if not line.strip():
            continue
        mark = agent.snapshot()
        try:
            for event in agent.run(line):
                render(event)
        except KeyboardInterrupt:
            agent.restore(mark)
            render.interrupted()
    render.bye()


def _split_args(args: tuple[str, ...], has_url: bool,
                interactive: bool) -> tuple[str | None, str | None]:
    wanted = "\"MESSAGE\"" if has_url else "NAME \"MESSAGE\""
    expected = 1 if has_url else 2
    if len(args) > expected:
        raise UsageError(f"too many arguments: expected {wanted}",
                         hint="quote the message: pi prompt NAME \"what is 2+2?\"")
    if len(args) < expected - (1 if interactive else 0) or (not has_url and not args):
        raise UsageError(f"missing arguments: expected {wanted}",
                         hint="pi prompt NAME \"MESSAGE\", or --base-url URL \"MESSAGE\"")
    name = None if has_url else args[0]
    rest = args[1:] if not has_url else args
    message = rest[0] if rest else None
    if message is not None and not message.strip():
        raise UsageError("the message is empty")
    return name, message


class _JsonRenderer:
    def __call__(self, event: Any) -> None:
        click.echo(json.dumps(event.to_json(), ensure_ascii=False))

    def interrupted(self) -> None:
        click.echo(json.dumps({"type": "interrupted"}))

    def bye(self) -> None:
        pass


class _RichRenderer:
    """Labelled, streamed output; text from the model is never read as markup."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, markup=False, emoji=False, soft_wrap=True)
        self.block: str | None = None   # "thinking" | "text" while streaming
        self.column0 = True

    def _write(self, text: str, style: str | None = None) -> None:
        from rich.text import Text

        if text:
            self.console.print(Text(text, style=style or ""), end="")
            self.column0 = text.endswith("\n")

    def _newline(self) -> None:
        if not self.column0:
            self.console.print()
            self.column0 = True

    def _line(self, *parts: tuple[str, str]) -> None:
        from rich.text import Text

        self._newline()
        self.console.print(Text.assemble(*parts))
        self.column0 = True
        self.block = None

    def __call__(self, event: Any) -> None:
        kind = event.type
        if kind == "start":
            tools = "ls, read, glob, rg" if event.tools else "off"
            api = "Responses API" if event.api == "responses" else "Chat Completions"
            self._line((f"model {event.model} at {event.base_url} ({api}; tools: {tools})",
                        "dim"))
        elif kind == "thinking":
            if self.block != "thinking":
                self._newline()
                self.console.print(_label("thinking", "dim bold"))
                self.block = "thinking"
            self._write(event.text, "dim italic")
        elif kind == "text":
            if self.block != "text":
                self._newline()
                if self.block == "thinking":
                    self.console.print(_label("answer", "bold"))
                self.block = "text"
            self._write(event.text)
        elif kind == "tool_call":
            self._line(("tool call ", "bold cyan"), (event.name, "bold"), (" ", ""),
                       (event.arguments or "{}", ""))
        elif kind == "tool_result":
            label = "tool error " if event.is_error else "tool result "
            size = f"{event.length} chars"
            if event.full_length > event.length:
                size += f", capped from {event.full_length}"
            if event.truncated:
                size += f"; showing the first {len(event.text)}"
            self._line((label, "bold red" if event.is_error else "bold green"),
                       (event.name, "bold"), (f" ({size})", "dim"))
            self._write(event.text.rstrip("\n") + ("\n…" if event.truncated else "") + "\n",
                        "red" if event.is_error else None)
        elif kind == "notice":
            self._line(("note: ", "bold yellow"), (event.text, "yellow"))
        elif kind == "final":
            if event.reason == "answer":
                self._line((f"done: final answer after {event.turns} "
                            f"turn{'s' if event.turns != 1 else ''}", "dim"))
            else:
                self._line((f"stopped: reached --max-turns {event.turns} without a final "
                            "answer", "bold yellow"))
        elif kind == "usage":
            tokens = (f"{_num(event.prompt_tokens)} prompt + "
                      f"{_num(event.completion_tokens)} completion tokens")
            timing = f"{event.elapsed_s:.2f} s"
            if event.first_token_s is not None:
                timing += f" (first token after {event.first_token_s:.2f} s)"
            self._line((f"{tokens}, {timing}", "dim"))

    def interrupted(self) -> None:
        self._line(("interrupted; that exchange is forgotten", "yellow"))

    def bye(self) -> None:
        self._newline()


def _label(text: str, style: str) -> Any:
    from rich.text import Text

    return Text(f"[{text}]", style=style)


def _num(value: int | None) -> str:
    return "?" if value is None else str(value)
