"""AI-assisted planning (`gpumod plan`, MCP `plan_with_ai`): which model, which tools, apply.

The planning agent itself (the loop, proposals, the `propose_plan` tool) is
`gpumod.agent.planning`; this module wires it to the operations layer: the model
to ask (a deployment, an endpoint, or the environment), the read-only tools over
`gpumod.ops.api`, the simulator as the judge of every proposal, and `apply_plan`,
which only the CLI calls, after `--apply` and a confirmation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gpumod import validate
from gpumod.agent import planning as agent
from gpumod.agent.client import Endpoint, check_url
from gpumod.agent.planning import CONTEXTS, NAMES, PlanResult, PlanStep, Proposal, Tool, schema
from gpumod.errors import ConfigError, UsageError
from gpumod.ops import api as bridge

__all__ = ["Endpoint", "PlanResult", "PlanStep", "Proposal", "apply_plan", "check_proposal",
           "plan", "resolve_endpoint"]

DEFAULT_MAX_TURNS = agent.DEFAULT_MAX_TURNS
ENV_BASE_URL = "GPUMOD_LLM_BASE_URL"
ENV_API_KEY = "GPUMOD_LLM_API_KEY"
ENV_MODEL = "GPUMOD_LLM_MODEL"


def resolve_endpoint(*, llm: str | None = None, base_url: str | None = None,
                     model: str | None = None) -> Endpoint:
    """Which model to ask: --llm NAME (a deployment), --base-url/--model, else the env."""
    if llm and base_url:
        raise UsageError("--llm and --base-url both name the model to ask; give one")
    api_key = os.environ.get(ENV_API_KEY) or None
    if llm:
        validate.name(llm, "deployment name")
        from gpumod.ops.endpoints import deployment_endpoint

        with bridge.session_store() as store:
            url, served = deployment_endpoint(store, llm)
        # A deployment's key is the user's PI_API_KEY unless GPUMOD_LLM_API_KEY says otherwise.
        return Endpoint(url, model or served, api_key or os.environ.get("PI_API_KEY") or None,
                        label=llm)
    url = base_url or os.environ.get(ENV_BASE_URL) or ""
    if not url:
        raise ConfigError("no model to plan with",
                          hint=f"pass --llm NAME (a deployment) or --base-url URL --model ID, "
                               f"or set {ENV_BASE_URL} (and {ENV_MODEL}, {ENV_API_KEY})")
    what = "--base-url" if base_url else ENV_BASE_URL
    return Endpoint(check_url(url, what), model or os.environ.get(ENV_MODEL) or None, api_key,
                    label=url)


_POD = {"type": "string", "description": "A pod name; default the active host."}

# Every tool is read-only: the model looks, the simulator judges, the user applies.
READ_ONLY_TOOLS: dict[str, Tool] = {
    "gpu_status": Tool("GPUs of the host with memory total/used/free (MiB) and their "
                       "processes.", schema({"pod": _POD}), bridge.gpu_status),
    "service_list": Tool("Defined services (engine, model, port, GPUs, args) and their state.",
                         schema({"pod": _POD}), bridge.service_list),
    "mode_list": Tool("Modes (named sets of services) and their services.",
                      schema({"pod": _POD}), bridge.mode_list),
    "mode_status": Tool("The host's current mode and its services' state.",
                        schema({"pod": _POD}), bridge.mode_status),
    "model_info": Tool("Facts of a model (params, weights, layers, context) by Hugging Face "
                       "id, folder or .gguf path.",
                       schema({"model": {"type": "string"}}, ("model",)), bridge.model_info),
    "model_estimate": Tool("Per-GPU VRAM estimate for serving a model with vllm or llamacpp "
                           "at a context length.",
                           schema({"model": {"type": "string"},
                                   "engine": {"type": "string", "enum": ["vllm", "llamacpp"]},
                                   "context": {"type": "integer"}, "pod": _POD}, ("model",)),
                           bridge.model_estimate),
    "simulate_mode": Tool("Would a mode, with services added or removed and these contexts, "
                          "fit in VRAM? Changes nothing.",
                          schema({"mode": {"type": "string"}, "add": NAMES, "remove": NAMES,
                                  "contexts": CONTEXTS, "pod": _POD}), bridge.simulate_mode),
}


def check_proposal(proposal: Proposal, *, pod: str | None = None) -> dict[str, Any]:
    """The simulator's verdict on a proposal (raises GpumodError when it cannot say)."""
    return bridge.simulate_mode(None, add=proposal.services, contexts=proposal.contexts,
                                pod=pod)


def plan(prompt: str, endpoint: Endpoint, *, pod: str | None = None,
         max_turns: int = DEFAULT_MAX_TURNS, client: Any = None,
         on_step: Callable[[PlanStep], None] | None = None) -> PlanResult:
    """Ask the model for a proposal; the simulator checks every one it hands in. Read-only."""
    return agent.plan(prompt, endpoint, tools=READ_ONLY_TOOLS,
                      check=lambda proposal: check_proposal(proposal, pod=pod),
                      target=f"Target pod: {pod}." if pod else "", max_turns=max_turns,
                      client=client, on_step=on_step)


def apply_plan(proposal: Proposal, *, pod: str | None = None) -> dict[str, Any]:
    """Make the proposal real: set the contexts, save the mode, switch to it.

    Simulated again first (the world may have changed since the model looked). A mode of
    that name with other services is replaced.
    """
    from gpumod.errors import CapacityError, NotFoundError
    from gpumod.ops import definitions, modes
    from gpumod.ops.hosts import resolve_host
    from gpumod.ops.services import get_service

    sim = check_proposal(proposal, pod=pod)
    if not sim.get("fits"):
        raise CapacityError(f"the proposal does not fit any more: {sim.get('reason')}",
                            hint="run `gpumod plan` again")
    with bridge.session_store() as store:
        host = (resolve_host(store, pod).name if pod else
                get_service(store, proposal.services[0]).host)
        for service, tokens in proposal.contexts.items():
            definitions.set_context(store, service, tokens)
        try:
            existing = modes.get_mode(store, proposal.mode)
        except NotFoundError:
            existing = None
        if existing is None or list(existing.services) != proposal.services \
                or existing.host != host:
            if existing is not None:
                modes.delete_mode(store, proposal.mode)
            modes.create_mode(store, proposal.mode, proposal.services, host=host,
                              description=" ".join(proposal.explanation.split())[:200])
    return bridge.mode_switch(proposal.mode)
