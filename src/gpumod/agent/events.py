"""Typed events the agent loop emits; the CLI renders them or prints them as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

TOOL_RESULT_PREVIEW_CHARS = 800  # what a tool result event shows; the model gets all of it


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class Start(Event):
    """The session's target: which endpoint, model and API, and whether tools are on."""

    type: ClassVar[str] = "start"
    base_url: str
    model: str
    api: str
    tools: bool
    workspace: str


@dataclass(frozen=True)
class TurnStart(Event):
    type: ClassVar[str] = "turn"
    turn: int
    max_turns: int
    api: str


@dataclass(frozen=True)
class ThinkingDelta(Event):
    type: ClassVar[str] = "thinking"
    text: str


@dataclass(frozen=True)
class TextDelta(Event):
    type: ClassVar[str] = "text"
    text: str


@dataclass(frozen=True)
class ToolCall(Event):
    type: ClassVar[str] = "tool_call"
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolResult(Event):
    type: ClassVar[str] = "tool_result"
    id: str
    name: str
    text: str          # shown part (truncated to TOOL_RESULT_PREVIEW_CHARS)
    length: int        # characters handed to the model
    full_length: int   # characters the tool produced before its own cap
    is_error: bool
    truncated: bool


@dataclass(frozen=True)
class Notice(Event):
    """Something the user should know that is not the model's output (tools off, ...)."""

    type: ClassVar[str] = "notice"
    text: str


@dataclass(frozen=True)
class Final(Event):
    """The loop ended: reason is "answer" (the model finished) or "max_turns"."""

    type: ClassVar[str] = "final"
    reason: str
    turns: int
    text: str


@dataclass(frozen=True)
class Usage(Event):
    type: ClassVar[str] = "usage"
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    elapsed_s: float
    first_token_s: float | None


def preview(text: str, limit: int = TOOL_RESULT_PREVIEW_CHARS) -> tuple[str, bool]:
    """The first `limit` characters of a tool result, and whether it was cut."""
    if len(text) <= limit:
        return text, False
    return text[:limit], True
