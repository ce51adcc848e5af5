"""Reading MCP tool results the way a client does."""

from __future__ import annotations

import json
from typing import Any


def structured(result: Any) -> dict:
    """A tool result's JSON: the structured content, else the text parsed as JSON."""
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)
