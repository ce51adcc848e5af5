"""`pi prompt`: which endpoint to ask, and the agent that asks it (the CLI only renders).

A deployment by name (its URL and served model from the store, the key from
PI_API_KEY) or any OpenAI-compatible URL; the agent loop and its read-only file
tools are `gpumod.agent`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from gpumod.errors import UsageError


@dataclass
class PromptRequest:
    name: str | None = None          # a deployment, or None with base_url
    pod: str | None = None           # the deployment must run on this pod
    base_url: str | None = None      # any OpenAI-compatible endpoint (…/v1)
    model: str | None = None         # model id (default: the deployment's, or the first)
    api: str = "auto"                # auto | chat | responses
    max_turns: int = 10
    tools: bool = True               # offer ls/read/glob/rg over the current directory


@dataclass
class PromptSession:
    agent: Any                       # gpumod.agent.loop.Agent: run(message) yields events
    start: Any                       # the Start event: where, which model, which API


def open_prompt(req: PromptRequest) -> PromptSession:
    """Resolve the endpoint, open the client, find the model, build the agent."""
    from gpumod.agent.client import check_url, discover_model, make_client
    from gpumod.agent.events import Start
    from gpumod.agent.loop import Agent
    from gpumod.agent.tools import Tools

    if req.base_url is not None:
        if req.pod:
            raise UsageError("--pod names a deployment's pod; it cannot go with --base-url")
        url, model = check_url(req.base_url, "--base-url"), req.model
    else:
        if not req.name:
            raise UsageError("which deployment? give its name, or --base-url URL")
        from gpumod.ops.endpoints import deployment_endpoint
        from gpumod.ops.session import open_store

        url, served = deployment_endpoint(open_store(), req.name, req.pod)
        model = req.model or served
    api_key = os.environ.get("PI_API_KEY") or None
    client = make_client(url, api_key)
    if not model:
        model = discover_model(client, base_url=url, key_set=api_key is not None)
    agent = Agent(client, model, base_url=url, key_set=api_key is not None,
                  tools=Tools() if req.tools else None, max_turns=req.max_turns, api=req.api)
    start = Start(base_url=url, model=model, api=agent.api, tools=agent.tools_enabled,
                  workspace=str(agent.workspace))
    return PromptSession(agent, start)
