"""The agent loop behind `pi prompt`: stream a model's answer, run its tool calls, repeat.

It talks to any OpenAI-compatible endpoint through the official `openai` SDK:
Chat Completions by default, the Responses API for model families that need
it (gpt-oss). It yields typed events (see `events.py`) as they arrive and
raises only gpumod's typed errors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpumod.agent.client import error_detail, translate_error
from gpumod.agent.events import (
    Event,
    Final,
    Notice,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolResult,
    TurnStart,
    Usage,
    preview,
)
from gpumod.agent.tools import Tools, chat_tool_schemas, responses_tool_schemas
from gpumod.errors import ConfigError, EngineError, GpumodError

DEFAULT_MAX_TURNS = 10
RESPONSES_MODEL_MARKERS = ("gpt-oss",)
API_CHOICES = ("auto", "chat", "responses")


def needs_responses_api(model: str) -> bool:
    """Models served best through the Responses API (gpt-oss: harmony format)."""
    lowered = model.lower()
    return any(marker in lowered for marker in RESPONSES_MODEL_MARKERS)


def system_prompt(workspace: Path, tools: bool) -> str:
    lines = [
        "You are a helpful assistant. Answer concisely.",
        f"The current working directory is {workspace}.",
    ]
    if tools:
        lines += [
            "You can call these read-only tools to look at files in it:",
            "- ls(path, ignore?): list a directory",
            "- read(file_path, offset?, limit?): read a text file, with line numbers",
            "- glob(pattern, path?): find files by pattern, e.g. **/*.py",
            "- rg(args): run ripgrep with arguments, e.g. \"TODO -t py -C 3\"",
            "File tools expect absolute paths inside the working directory. "
            "Call a tool only when you need to; then answer in plain text.",
        ]
    return "\n".join(lines)


def _tools_rejected(exc: Exception) -> bool:
    """vLLM without a tool parser: 400 '"auto" tool choice requires --enable-auto-tool-choice'."""
    import openai

    if not isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        return False
    detail = error_detail(exc).lower()
    return "tool" in detail


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _TurnOutput:
    text: str = ""
    calls: list[_PendingCall] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Agent:
    """One conversation with one model; `run` may be called again (interactive mode)."""

    def __init__(self, client: Any, model: str, *, base_url: str, key_set: bool,
                 tools: Tools | None, max_turns: int = DEFAULT_MAX_TURNS, api: str = "auto",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_turns < 1:
            raise ConfigError("--max-turns must be at least 1")
        if api not in API_CHOICES:
            raise ConfigError(f"unknown API {api!r}; use one of {', '.join(API_CHOICES)}")
        self.client = client
        self.model = model
        self.base_url = base_url
        self.key_set = key_set
        self.tools = tools
        self.max_turns = max_turns
        self.api = ("responses" if needs_responses_api(model) else "chat") if api == "auto" \
            else api
        self.clock = clock
        self.workspace = tools.workspace if tools else Path.cwd().resolve()
        self.system = system_prompt(self.workspace, tools is not None)
        # Chat Completions history; the Responses API keeps its own item list.
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}]
        self.items: list[dict[str, Any]] = []
        self._calls = 0

    def snapshot(self) -> tuple[int, int]:
        """A mark in the history, to undo an interrupted exchange with `restore`."""
        return len(self.messages), len(self.items)

    def restore(self, mark: tuple[int, int]) -> None:
        del self.messages[mark[0]:]
        del self.items[mark[1]:]

    @property
    def tools_enabled(self) -> bool:
        return self.tools is not None

    def _disable_tools(self) -> None:
        self.tools = None
        self.system = system_prompt(self.workspace, False)
        self.messages[0] = {"role": "system", "content": self.system}

    # -- the loop ---------------------------------------------------------
    def run(self, message: str) -> Iterator[Event]:
        """Send one user message; yield events until the final answer or max turns."""
        started = self.clock()
        first_token: list[float] = []
        totals = [0, 0]
        counted = [False, False]
        if self.api == "chat":
            self.messages.append({"role": "user", "content": message})
        else:
            self.items.append({"role": "user", "content": message})
        turn = 0
        final: Final | None = None
        while final is None:
            turn += 1
            yield TurnStart(turn=turn, max_turns=self.max_turns, api=self.api)
            stream = self._chat_turn() if self.api == "chat" else self._responses_turn()
            out = yield from self._timed(stream, started, first_token)
            for index, value in enumerate((out.prompt_tokens, out.completion_tokens)):
                if value is not None:
                    totals[index] += value
                    counted[index] = True
            if not out.calls:
                self._remember_answer(out.text)
                final = Final(reason="answer", turns=turn, text=out.text)
                break
            self._remember_calls(out)
            for call in out.calls:
                yield ToolCall(id=call.id, name=call.name, arguments=call.arguments)
                assert self.tools is not None
                outcome = self.tools.call(call.name, call.arguments)
                shown, cut = preview(outcome.text)
                yield ToolResult(id=call.id, name=call.name, text=shown,
                                 length=len(outcome.text), full_length=outcome.full_length,
                                 is_error=outcome.is_error, truncated=cut)
                self._remember_result(call, outcome.text)
            if turn >= self.max_turns:
                final = Final(reason="max_turns", turns=turn, text=out.text)
        yield final
        prompt = totals[0] if counted[0] else None
        completion = totals[1] if counted[1] else None
        total = None if prompt is None and completion is None else (prompt or 0) + (completion or 0)
        yield Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total,
                    elapsed_s=round(self.clock() - started, 3),
                    first_token_s=round(first_token[0] - started, 3) if first_token else None)

    def _timed(self, stream: Generator[Event, None, _TurnOutput], started: float,
               first_token: list[float]) -> Generator[Event, None, _TurnOutput]:
        while True:
            try:
                event = next(stream)
            except StopIteration as stop:
                return stop.value
            if not first_token and isinstance(event, TextDelta | ThinkingDelta):
                first_token.append(self.clock())
            yield event

    # -- history ----------------------------------------------------------
    def _remember_answer(self, text: str) -> None:
        if self.api == "chat":
            self.messages.append({"role": "assistant", "content": text})
        else:
            self.items.append({"role": "assistant", "content": text})

    def _remember_calls(self, out: _TurnOutput) -> None:
        if self.api == "chat":
            self.messages.append({
                "role": "assistant", "content": out.text or None,
                "tool_calls": [{"id": c.id, "type": "function",
                                "function": {"name": c.name,
                                             "arguments": _history_arguments(c.arguments)}}
                               for c in out.calls],
            })
        else:
            if out.text:
                self.items.append({"role": "assistant", "content": out.text})
            for c in out.calls:
                self.items.append({"type": "function_call", "call_id": c.id, "name": c.name,
                                   "arguments": _history_arguments(c.arguments)})

    def _remember_result(self, call: _PendingCall, text: str) -> None:
        if self.api == "chat":
            self.messages.append({"role": "tool", "tool_call_id": call.id, "content": text})
        else:
            self.items.append({"type": "function_call_output", "call_id": call.id,
                               "output": text})

    def _call_id(self) -> str:
        self._calls += 1
        return f"call_{self._calls}"

    # -- requests with the tool fallback ------------------------------------
    def _open(self, create: Callable[[bool], Any]) -> Generator[Event, None, Any]:
        """Start a streaming request; if tools are refused, say so and go on without."""
        try:
            return create(self.tools_enabled)
        except Exception as exc:
            if self.tools_enabled and _tools_rejected(exc):
                yield Notice(text="tools are not enabled on this endpoint "
                                  f"({error_detail(exc)}); continuing without tools")
                self._disable_tools()
                try:
                    return create(False)
                except Exception as again:
                    raise translate_error(again, base_url=self.base_url,
                                          key_set=self.key_set) from again
            raise translate_error(exc, base_url=self.base_url, key_set=self.key_set) from exc

    def _iterate(self, stream: Any) -> Iterator[Any]:
        try:
            yield from stream
        except GpumodError:
            raise
        except Exception as exc:
            raise translate_error(exc, base_url=self.base_url, key_set=self.key_set) from exc

    # -- Chat Completions ------------------------------------------------
    def _chat_turn(self) -> Generator[Event, None, _TurnOutput]:
        def create(with_tools: bool) -> Any:
            kwargs: dict[str, Any] = {
                "model": self.model, "messages": self.messages, "stream": True,
                "stream_options": {"include_usage": True},
            }
            if with_tools:
                kwargs["tools"] = chat_tool_schemas()
            return self.client.chat.completions.create(**kwargs)

        stream = yield from self._open(create)
        out = _TurnOutput()
        pending: dict[int, _PendingCall] = {}
        text: list[str] = []
        for chunk in self._iterate(stream):
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                out.prompt_tokens = getattr(usage, "prompt_tokens", None)
                out.completion_tokens = getattr(usage, "completion_tokens", None)
            for choice in getattr(chunk, "choices", None) or []:
                delta = choice.delta
                if delta is None:
                    continue
                thinking = _reasoning_of(delta)
                if thinking:
                    yield ThinkingDelta(text=thinking)
                if delta.content:
                    text.append(delta.content)
                    yield TextDelta(text=delta.content)
                for tc in delta.tool_calls or []:
                    index = tc.index if tc.index is not None else len(pending)
                    entry = pending.setdefault(index, _PendingCall())
                    if tc.id and not entry.id:
                        entry.id = tc.id
                    if tc.function is not None:
                        if tc.function.name and not entry.name:
                            entry.name = tc.function.name
                        if tc.function.arguments:
                            entry.arguments += tc.function.arguments
        out.text = "".join(text)
        if self.tools_enabled:
            for index in sorted(pending):
                call = pending[index]
                if not call.id:
                    call.id = self._call_id()
                out.calls.append(call)
        elif pending:
            names = ", ".join(sorted({c.name or "?" for c in pending.values()}))
            yield Notice(text=f"the model asked for tools ({names}) but tools are off; "
                              "taking its text as the answer")
        return out

    # -- Responses API -----------------------------------------------------
    def _responses_turn(self) -> Generator[Event, None, _TurnOutput]:
        def create(with_tools: bool) -> Any:
            kwargs: dict[str, Any] = {
                "model": self.model, "instructions": self.system, "input": self.items,
                "stream": True, "store": False,
            }
            if with_tools:
                kwargs["tools"] = responses_tool_schemas()
            return self.client.responses.create(**kwargs)

        stream = yield from self._open(create)
        out = _TurnOutput()
        text: list[str] = []
        streamed: set[str] = set()  # output items whose text came as deltas
        for event in self._iterate(stream):
            kind = getattr(event, "type", "")
            if kind == "response.output_text.delta":
                streamed.add(getattr(event, "item_id", "") or "")
                text.append(event.delta)
                yield TextDelta(text=event.delta)
            elif kind in ("response.reasoning_text.delta",
                          "response.reasoning_summary_text.delta"):
                streamed.add(getattr(event, "item_id", "") or "")
                yield ThinkingDelta(text=event.delta)
            elif kind == "response.output_item.done":
                item = event.item
                item_type = getattr(item, "type", "")
                if item_type == "function_call":
                    out.calls.append(_PendingCall(id=item.call_id or self._call_id(),
                                                  name=item.name, arguments=item.arguments))
                elif getattr(item, "id", None) not in streamed:
                    # Servers that send whole items without deltas (some vLLM versions).
                    whole = _item_text(item)
                    if whole and item_type == "reasoning":
                        yield ThinkingDelta(text=whole)
                    elif whole and item_type == "message":
                        text.append(whole)
                        yield TextDelta(text=whole)
            elif kind in ("response.completed", "response.incomplete"):
                usage = getattr(event.response, "usage", None)
                if usage is not None:
                    out.prompt_tokens = getattr(usage, "input_tokens", None)
                    out.completion_tokens = getattr(usage, "output_tokens", None)
            elif kind in ("response.failed", "error"):
                detail = getattr(event, "message", None)
                response = getattr(event, "response", None)
                if detail is None and response is not None and response.error is not None:
                    detail = response.error.message
                raise EngineError(f"the endpoint {self.base_url} failed the response: "
                                  f"{detail or 'no message'}")
        out.text = "".join(text)
        if not self.tools_enabled and out.calls:
            out.calls = []
        return out


def _reasoning_of(delta: Any) -> str | None:
    """vLLM puts thinking in `reasoning_content` (older) or `reasoning` (newer)."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(delta, name, None)
        if value is None:
            extra = getattr(delta, "model_extra", None) or {}
            value = extra.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _item_text(item: Any) -> str:
    """The text of a whole Responses output item (message or reasoning)."""
    parts: list[str] = []
    for group in ("content", "summary"):
        for part in getattr(item, group, None) or []:
            value = getattr(part, "text", None)
            if isinstance(value, str):
                parts.append(value)
    return "".join(parts)


def _history_arguments(arguments: str) -> str:
    """Arguments as sent back to the server: valid JSON, or chat templates may break."""
    try:
        json.loads(arguments or "")
    except (json.JSONDecodeError, TypeError):
        return "{}"
    return arguments
