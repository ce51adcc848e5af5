"""AI-assisted planning (`gpumod plan`, MCP `plan_with_ai`): a model proposes, the simulator checks.

An OpenAI-compatible model (one of the user's deployments, or any endpoint)
gets read-only tools over the operations layer (services, modes, GPU status,
model facts, estimates, simulation) and one more, `propose_plan`, through
which it hands in its proposal as structured JSON: a mode with its services
and their contexts. Every proposal is simulated before anyone sees it; a
proposal that does not fit goes back to the model with the simulator's reason
and alternatives, so it can revise it. The result says whether the last
proposal fits. Nothing here changes anything: `apply_plan` does, and only the
CLI calls it, after `--apply` and a confirmation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpumod import validate
from gpumod.errors import ConfigError, EngineError, GpumodError, UsageError
from gpumod.ops import api as bridge

DEFAULT_MAX_TURNS = 12
MAX_PROPOSALS = 3              # simulator rejections the model may answer before we stop
TOOL_RESULT_LIMIT = 24_000     # characters of one tool result handed to the model

ENV_BASE_URL = "GPUMOD_LLM_BASE_URL"
ENV_API_KEY = "GPUMOD_LLM_API_KEY"
ENV_MODEL = "GPUMOD_LLM_MODEL"


# --------------------------------------------------------------------------- endpoint


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str | None
    api_key: str | None = field(default=None, repr=False)
    label: str = ""

    def to_json(self) -> dict[str, Any]:  # never the key
        return {"base_url": self.base_url, "model": self.model, "label": self.label,
                "api_key_set": self.api_key is not None}


def _check_url(url: str, what: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UsageError(f"{what} must be an http(s) URL, got {url!r}",
                         hint="e.g. http://127.0.0.1:8000/v1")
    return url.rstrip("/")


def resolve_endpoint(*, llm: str | None = None, base_url: str | None = None,
                     model: str | None = None) -> Endpoint:
    """Which model to ask: --llm NAME (a deployment), --base-url/--model, else the env."""
    if llm and base_url:
        raise UsageError("--llm and --base-url both name the model to ask; give one")
    api_key = os.environ.get(ENV_API_KEY) or None
    if llm:
        validate.name(llm, "deployment name")
        from gpumod.ops.endpoints import endpoint_for
        from gpumod.ops.services import get_service

        with bridge.session_store() as store:
            url, served = endpoint_for(store, get_service(store, llm))
        # A deployment's key is the user's PI_API_KEY unless GPUMOD_LLM_API_KEY says otherwise.
        return Endpoint(url, model or served, api_key or os.environ.get("PI_API_KEY") or None,
                        label=llm)
    url = base_url or os.environ.get(ENV_BASE_URL) or ""
    if not url:
        raise ConfigError("no model to plan with",
                          hint=f"pass --llm NAME (a deployment) or --base-url URL --model ID, "
                               f"or set {ENV_BASE_URL} (and {ENV_MODEL}, {ENV_API_KEY})")
    what = "--base-url" if base_url else ENV_BASE_URL
    return Endpoint(_check_url(url, what), model or os.environ.get(ENV_MODEL) or None, api_key,
                    label=url)


# --------------------------------------------------------------------------- tools


def _schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


_POD = {"type": "string", "description": "A pod name; default the active host."}
_NAMES = {"type": "array", "items": {"type": "string"}}
_CONTEXTS = {"type": "object", "additionalProperties": {"type": "integer"},
             "description": "Context length (tokens) per service, e.g. {\"chat\": 16384}."}

# name -> (description, parameters, call). Every call is read-only.
READ_ONLY_TOOLS: dict[str, tuple[str, dict[str, Any], Callable[..., Any]]] = {
    "gpu_status": ("GPUs of the host with memory total/used/free (MiB) and their processes.",
                   _schema({"pod": _POD}), bridge.gpu_status),
    "service_list": ("Defined services (engine, model, port, GPUs, args) and their state.",
                     _schema({"pod": _POD}), bridge.service_list),
    "mode_list": ("Modes (named sets of services) and their services.",
                  _schema({"pod": _POD}), bridge.mode_list),
    "mode_status": ("The host's current mode and its services' state.",
                    _schema({"pod": _POD}), bridge.mode_status),
    "model_info": ("Facts of a model (params, weights, layers, context) by Hugging Face id, "
                   "folder or .gguf path.",
                   _schema({"model": {"type": "string"}}, ("model",)), bridge.model_info),
    "model_estimate": ("Per-GPU VRAM estimate for serving a model with vllm or llamacpp at a "
                       "context length.",
                       _schema({"model": {"type": "string"},
                                "engine": {"type": "string", "enum": ["vllm", "llamacpp"]},
                                "context": {"type": "integer"}, "pod": _POD}, ("model",)),
                       bridge.model_estimate),
    "simulate_mode": ("Would a mode, with services added or removed and these contexts, fit "
                      "in VRAM? Changes nothing.",
                      _schema({"mode": {"type": "string"}, "add": _NAMES, "remove": _NAMES,
                               "contexts": _CONTEXTS, "pod": _POD}), bridge.simulate_mode),
}

PROPOSE = "propose_plan"
PROPOSE_SCHEMA = _schema({
    "mode": {"type": "string", "description": "Name of the mode to create or update."},
    "services": {**_NAMES, "description": "The mode's services (defined service names), "
                                          "in start order."},
    "contexts": _CONTEXTS,
    "explanation": {"type": "string", "description": "Why, in two or three sentences."},
}, ("mode", "services", "explanation"))


def tool_schemas() -> list[dict[str, Any]]:
    """Chat Completions `tools`: the read-only tools, then `propose_plan`."""
    tools = [{"type": "function", "function": {"name": name, "description": desc,
                                               "parameters": params}}
             for name, (desc, params, _) in READ_ONLY_TOOLS.items()]
    tools.append({"type": "function", "function": {
        "name": PROPOSE, "parameters": PROPOSE_SCHEMA,
        "description": "Hand in your proposal. It is simulated at once; if it does not fit "
                       "you get the reason and alternatives and may propose again."}})
    return tools


def _parse_arguments(raw: str | None) -> dict[str, Any]:
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"arguments are not JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise UsageError("arguments must be a JSON object")
    return value


def run_read_only_tool(name: str, raw_arguments: str | None) -> tuple[str, bool]:
    """Run one read-only tool for the model: (result text, is_error). Never raises."""
    entry = READ_ONLY_TOOLS.get(name)
    if entry is None:
        return f"error: unknown tool {name!r}; use one of {', '.join(READ_ONLY_TOOLS)}", True
    _, params, call = entry
    try:
        args = _parse_arguments(raw_arguments)
        unknown = sorted(set(args) - set(params["properties"]))
        if unknown:
            raise UsageError(f"unknown argument(s) {', '.join(unknown)} for {name}")
        missing = [r for r in params["required"] if r not in args]
        if missing:
            raise UsageError(f"{name} needs {', '.join(missing)}")
        result = call(**args)
    except GpumodError as exc:
        return f"error: {bridge.error_text(exc)}", True
    except TypeError as exc:
        return f"error: bad arguments for {name}: {exc}", True
    text = json.dumps(result, default=str)
    if len(text) > TOOL_RESULT_LIMIT:
        text = text[:TOOL_RESULT_LIMIT] + " ...[truncated]"
    return text, False


# --------------------------------------------------------------------------- proposals


@dataclass
class Proposal:
    mode: str
    services: list[str]
    contexts: dict[str, int] = field(default_factory=dict)
    explanation: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "services": self.services, "contexts": self.contexts,
                "explanation": self.explanation}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Proposal:
        """Validate a proposal's shape (UsageError says what is wrong, for the model)."""
        mode = data.get("mode")
        services = data.get("services")
        contexts = data.get("contexts") or {}
        explanation = data.get("explanation") or ""
        if not isinstance(mode, str) or not mode:
            raise UsageError("proposal: 'mode' must be a non-empty string")
        validate.name(mode, "mode name")
        if not isinstance(services, list) or not services or \
                not all(isinstance(s, str) and s for s in services):
            raise UsageError("proposal: 'services' must be a non-empty list of service names")
        if len(set(services)) != len(services):
            raise UsageError("proposal: 'services' lists a service twice")
        if not isinstance(contexts, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0
                for v in contexts.values()):
            raise UsageError("proposal: 'contexts' must map service names to positive integers")
        if not isinstance(explanation, str):
            raise UsageError("proposal: 'explanation' must be a string")
        return cls(mode, list(services), {str(k): int(v) for k, v in contexts.items()},
                   explanation.strip())


def check_proposal(proposal: Proposal, *, pod: str | None = None) -> dict[str, Any]:
    """The simulator's verdict on a proposal (raises GpumodError when it cannot say)."""
    return bridge.simulate_mode(None, add=proposal.services, contexts=proposal.contexts,
                                pod=pod)


def _rejection_text(sim: dict[str, Any]) -> str:
    lines = [f"REJECTED by the simulator: {sim.get('reason') or 'does not fit'}"]
    for gpu in sim.get("gpus", []):
        if not gpu.get("fits", True):
            lines.append(f"GPU {gpu['index']}: over by {gpu.get('over_by_mib', 0)} MiB")
    for alt in sim.get("alternatives", []):
        lines.append(f"alternative: {alt.get('description')}")
    lines.append("Revise the proposal (fewer services, shorter contexts) and call "
                 f"{PROPOSE} again.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the loop


SYSTEM_PROMPT = f"""\
You are gpumod's planning assistant. gpumod runs LLM inference services (vLLM, llama.cpp, \
others) on GPU hosts and groups them into modes (named sets of services that run together).
The user asks for a change. Look first: use the read-only tools (service_list, mode_list, \
mode_status, gpu_status, model_info, model_estimate, simulate_mode). Then hand in exactly one \
proposal with the {PROPOSE} tool: a mode name, its services (only services that service_list \
shows), and optional context lengths per service. The proposal is simulated; if it does not \
fit in VRAM you get the reason and may revise it. After an accepted proposal, answer with a \
short summary for the user. You cannot change anything yourself."""


@dataclass
class PlanStep:
    kind: str                 # tool_call | tool_result | proposal | rejected | text
    name: str = ""
    text: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "text": self.text}


@dataclass
class PlanResult:
    endpoint: Endpoint
    model: str
    proposal: Proposal | None = None
    simulation: dict[str, Any] | None = None
    fits: bool = False
    answer: str = ""
    steps: list[PlanStep] = field(default_factory=list)
    rejected: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint.to_json(), "model": self.model,
            "proposal": self.proposal.to_json() if self.proposal else None,
            "fits": self.fits, "simulation": self.simulation, "answer": self.answer,
            "rejected_proposals": self.rejected, "steps": [s.to_json() for s in self.steps],
        }


def make_client(endpoint: Endpoint) -> Any:
    from gpumod.agent.loop import make_client as agent_client

    return agent_client(endpoint.base_url, endpoint.api_key, timeout_s=300.0)


def plan(prompt: str, endpoint: Endpoint, *, pod: str | None = None,
         max_turns: int = DEFAULT_MAX_TURNS, client: Any = None,
         on_step: Callable[[PlanStep], None] | None = None) -> PlanResult:
    """Ask the model for a proposal; simulate every proposal it hands in. Read-only."""
    from gpumod.agent.loop import discover_model, translate_error

    if not prompt or not prompt.strip():
        raise UsageError("the prompt is empty", hint='gpumod plan "add a reranker to code"')
    if max_turns < 1:
        raise UsageError("max turns must be at least 1")
    client = client or make_client(endpoint)
    key_set = endpoint.api_key is not None
    model = endpoint.model or discover_model(client, base_url=endpoint.base_url,
                                             key_set=key_set)
    result = PlanResult(endpoint, model)

    def step(kind: str, name: str = "", text: str = "") -> None:
        s = PlanStep(kind, name, text)
        result.steps.append(s)
        if on_step is not None:
            on_step(s)

    host_hint = f" Target pod: {pod}." if pod else ""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT + host_hint},
        {"role": "user", "content": prompt.strip()},
    ]
    tools = tool_schemas()
    for _turn in range(max_turns):
        try:
            reply = client.chat.completions.create(model=model, messages=messages, tools=tools,
                                                   tool_choice="auto")
        except Exception as exc:
            raise translate_error(exc, base_url=endpoint.base_url, key_set=key_set) from exc
        if not reply.choices:
            raise EngineError(f"the endpoint {endpoint.base_url} answered with no choices")
        message = reply.choices[0].message
        calls = list(message.tool_calls or [])
        if message.content:
            step("text", text=message.content)
        if not calls:
            result.answer = message.content or ""
            break
        messages.append({
            "role": "assistant", "content": message.content or None,
            "tool_calls": [{"id": c.id, "type": "function",
                            "function": {"name": c.function.name,
                                         "arguments": c.function.arguments or "{}"}}
                           for c in calls]})
        for call in calls:
            name, raw = call.function.name, call.function.arguments
            step("tool_call", name, raw or "{}")
            if name == PROPOSE:
                text = _handle_proposal(result, raw, pod, step)
            else:
                text, _ = run_read_only_tool(name, raw)
                step("tool_result", name, text)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": text})
        if result.fits or result.rejected >= MAX_PROPOSALS:
            # Accepted (or out of tries): one last turn for the model's summary, no tools.
            result.answer = _summary(client, model, messages, endpoint, key_set) or result.answer
            break
    return result


def _handle_proposal(result: PlanResult, raw: str | None, pod: str | None,
                     step: Callable[[str, str, str], None]) -> str:
    try:
        proposal = Proposal.parse(_parse_arguments(raw))
        sim = check_proposal(proposal, pod=pod)
    except GpumodError as exc:
        result.rejected += 1
        text = f"error: {bridge.error_text(exc)}\nFix the proposal and call {PROPOSE} again."
        step("rejected", PROPOSE, text)
        return text
    result.proposal, result.simulation = proposal, sim
    result.fits = bool(sim.get("fits"))
    if result.fits:
        text = "ACCEPTED: the simulator says it fits.\n" + json.dumps(
            {"gpus": sim.get("gpus"), "warnings": sim.get("warnings")}, default=str)
        step("proposal", PROPOSE, text)
        return text
    result.rejected += 1
    text = _rejection_text(sim)
    step("rejected", PROPOSE, text)
    return text


def _summary(client: Any, model: str, messages: list[dict[str, Any]], endpoint: Endpoint,
             key_set: bool) -> str:
    from gpumod.agent.loop import translate_error

    try:
        reply = client.chat.completions.create(model=model, messages=messages)
    except Exception as exc:
        raise translate_error(exc, base_url=endpoint.base_url, key_set=key_set) from exc
    if not reply.choices:
        return ""
    return reply.choices[0].message.content or ""


# --------------------------------------------------------------------------- apply


def apply_plan(proposal: Proposal, *, pod: str | None = None) -> dict[str, Any]:
    """Make the proposal real: set the contexts, save the mode, switch to it.

    Simulated again first (the world may have changed since the model looked). A mode of
    that name with other services is replaced.
    """
    from gpumod.errors import CapacityError, NotFoundError
    from gpumod.ops import lifecycle, modes
    from gpumod.ops.hosts import resolve_host

    sim = check_proposal(proposal, pod=pod)
    if not sim.get("fits"):
        raise CapacityError(f"the proposal does not fit any more: {sim.get('reason')}",
                            hint="run `gpumod plan` again")
    with bridge.session_store() as store:
        host = (resolve_host(store, pod).name if pod else
                lifecycle.get_service(store, proposal.services[0]).host)
        if proposal.contexts:
            set_context = bridge._op("gpumod.ops.lifecycle", "set_context")
            for service, tokens in proposal.contexts.items():
                set_context(store, service, tokens)
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
