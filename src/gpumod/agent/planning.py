"""The planning agent behind `gpumod plan` and MCP `plan_with_ai`: a model proposes, a checker judges.

The model gets read-only tools and one more, `propose_plan`, through which it
hands in its proposal as structured JSON: a mode with its services and their
contexts. Every proposal goes to the checker (the operations layer passes the
simulator) before anyone sees it; a proposal that does not fit goes back to the
model with the reason and alternatives, so it can revise it. The tools and the
checker are handed in (gpumod.ops.planning wires them to the operations layer),
so this module knows models and messages, not stores or hosts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpumod import validate
from gpumod.agent.client import Endpoint, client_for, discover_model, parse_arguments, translate_error
from gpumod.errors import EngineError, GpumodError, UsageError

DEFAULT_MAX_TURNS = 12
MAX_PROPOSALS = 3              # checker rejections the model may answer before we stop
TOOL_RESULT_LIMIT = 24_000     # characters of one tool result handed to the model
PROPOSE = "propose_plan"


@dataclass(frozen=True)
class Tool:
    """A read-only tool offered to the model: what it does, its JSON schema, the call."""

    description: str
    parameters: dict[str, Any]
    call: Callable[..., Any]


def schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


NAMES = {"type": "array", "items": {"type": "string"}}
CONTEXTS = {"type": "object", "additionalProperties": {"type": "integer"},
            "description": "Context length (tokens) per service, e.g. {\"chat\": 16384}."}
PROPOSE_SCHEMA = schema({
    "mode": {"type": "string", "description": "Name of the mode to create or update."},
    "services": {**NAMES, "description": "The mode's services (defined service names), "
                                         "in start order."},
    "contexts": CONTEXTS,
    "explanation": {"type": "string", "description": "Why, in two or three sentences."},
}, ("mode", "services", "explanation"))


def tool_schemas(tools: dict[str, Tool]) -> list[dict[str, Any]]:
    """Chat Completions `tools`: the read-only tools, then `propose_plan`."""
    out = [{"type": "function", "function": {"name": name, "description": tool.description,
                                             "parameters": tool.parameters}}
           for name, tool in tools.items()]
    out.append({"type": "function", "function": {
        "name": PROPOSE, "parameters": PROPOSE_SCHEMA,
        "description": "Hand in your proposal. It is simulated at once; if it does not fit "
                       "you get the reason and alternatives and may propose again."}})
    return out


def run_tool(tools: dict[str, Tool], name: str, raw_arguments: str | None) -> tuple[str, bool]:
    """Run one read-only tool for the model: (result text, is_error). Never raises for
    the model's mistakes or gpumod's typed errors."""
    tool = tools.get(name)
    if tool is None:
        return f"error: unknown tool {name!r}; use one of {', '.join(tools)}", True
    try:
        args = parse_arguments(raw_arguments)
        unknown = sorted(set(args) - set(tool.parameters["properties"]))
        if unknown:
            raise UsageError(f"unknown argument(s) {', '.join(unknown)} for {name}")
        missing = [r for r in tool.parameters["required"] if r not in args]
        if missing:
            raise UsageError(f"{name} needs {', '.join(missing)}")
        result = tool.call(**args)
    except GpumodError as exc:
        return f"error: {exc.text()}", True
    except TypeError as exc:  # a value of the wrong type for the call
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


def rejection_text(sim: dict[str, Any]) -> str:
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


Check = Callable[[Proposal], dict[str, Any]]


def plan(prompt: str, endpoint: Endpoint, *, tools: dict[str, Tool], check: Check,
         target: str = "", max_turns: int = DEFAULT_MAX_TURNS, client: Any = None,
         on_step: Callable[[PlanStep], None] | None = None) -> PlanResult:
    """Ask the model for a proposal; `check` every proposal it hands in (a dict with at
    least `fits`). `target`: a line added to the system prompt (e.g. the pod)."""
    if not prompt or not prompt.strip():
        raise UsageError("the prompt is empty", hint='gpumod plan "add a reranker to code"')
    if max_turns < 1:
        raise UsageError("max turns must be at least 1")
    client = client or client_for(endpoint)
    model = endpoint.model or discover_model(client, base_url=endpoint.base_url,
                                             key_set=endpoint.key_set)
    result = PlanResult(endpoint, model)

    def step(kind: str, name: str = "", text: str = "") -> None:
        s = PlanStep(kind, name, text)
        result.steps.append(s)
        if on_step is not None:
            on_step(s)

    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT + (f" {target}" if target else "")},
        {"role": "user", "content": prompt.strip()},
    ]
    schemas = tool_schemas(tools)
    for _turn in range(max_turns):
        message = _ask(client, endpoint, model, messages, schemas)
        if message is None:
            raise EngineError(f"the endpoint {endpoint.base_url} answered with no choices")
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
                text = _handle_proposal(result, raw, check, step)
            else:
                text, _ = run_tool(tools, name, raw)
                step("tool_result", name, text)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": text})
        if result.fits or result.rejected >= MAX_PROPOSALS:
            # Accepted (or out of tries): one last turn for the model's summary, no tools.
            last = _ask(client, endpoint, model, messages, None)
            result.answer = (last.content if last is not None else "") or result.answer
            break
    return result


def _ask(client: Any, endpoint: Endpoint, model: str, messages: list[dict[str, Any]],
         schemas: list[dict[str, Any]] | None) -> Any:
    """One Chat Completions turn: the first choice's message, or None without choices."""
    kwargs: dict[str, Any] = {"model": model, "messages": messages}
    if schemas is not None:
        kwargs.update(tools=schemas, tool_choice="auto")
    try:
        reply = client.chat.completions.create(**kwargs)
    except Exception as exc:  # the SDK's errors, translated (typed) by translate_error
        raise translate_error(exc, base_url=endpoint.base_url, key_set=endpoint.key_set) \
            from exc
    return reply.choices[0].message if reply.choices else None


def _handle_proposal(result: PlanResult, raw: str | None, check: Check,
                     step: Callable[[str, str, str], None]) -> str:
    try:
        proposal = Proposal.parse(parse_arguments(raw))
        sim = check(proposal)
    except GpumodError as exc:
        result.rejected += 1
        text = f"error: {exc.text()}\nFix the proposal and call {PROPOSE} again."
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
    text = rejection_text(sim)
    step("rejected", PROPOSE, text)
    return text
