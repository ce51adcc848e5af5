"""What the "model" says: echo replies or a scripted turn, tool calls and reasoning as vLLM
formats them with and without its parsers."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpumod.testing.fake_vllm.engine import Engine


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+$", text)


def fragments(text: str, size: int = 8) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


@dataclass
class Turn:
    reasoning: str | None
    content: str | None
    tool_calls: list[dict[str, str]]
    finish: str = "stop"


def error_response(message: str, status: int, err_type: str, param: str | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": err_type, "param": param,
                                   "code": status}}, status_code=status)


class Replies:
    """Decides what the "model" says for a request."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine

    def next_turn(self, last_user: str, *, max_tokens: int | None, tools_allowed: bool,
                  forced_tool: str | None) -> Turn:
        e = self.e
        if not e.weights_valid:
            return Turn(None, "!!!!!!!!", [], "length")
        if e.script:
            raw = e.script[min(e.chat_count, len(e.script) - 1)]
            e.chat_count += 1
            calls = [{"name": str(c["name"]),
                      "arguments": c["arguments"] if isinstance(c.get("arguments"), str)
                      else json.dumps(c.get("arguments", {}))}
                     for c in raw.get("tool_calls") or []]
            turn = Turn(raw.get("reasoning"), raw.get("content"), calls)
        else:
            e.chat_count += 1
            text = f"Echo: {last_user}".strip()
            words = pieces(text)
            finish = "stop"
            if max_tokens is not None and len(words) > max_tokens:
                text, finish = "".join(words[:max_tokens]).rstrip(), "length"
            turn = Turn(None, text, [], finish)
        if forced_tool and not turn.tool_calls:
            turn.tool_calls = [{"name": forced_tool, "arguments": "{}"}]
        if turn.tool_calls and not tools_allowed:
            # the model still "says" the call; without a parser it stays in the text
            raw_calls = "".join(
                "<tool_call>\n" + json.dumps({"name": c["name"],
                                              "arguments": json.loads(c["arguments"] or "{}")})
                + "\n</tool_call>" for c in turn.tool_calls)
            turn.content = (turn.content or "") + raw_calls
            turn.tool_calls = []
        if turn.reasoning and not e.args.reasoning_parser:
            turn.content = f"<think>\n{turn.reasoning}\n</think>\n\n{turn.content or ''}"
            turn.reasoning = None
        if turn.tool_calls:
            turn.finish = "tool_calls"
        return turn
