"""`gpumod mcp`: gpumod's operations as MCP tools, on the official MCP Python SDK.

Every tool is a thin call into `gpumod.ops.api`, which calls the same
operations the CLI uses. A gpumod error comes back as a tool error
(`isError: true`): its message and hint as text, and as structured content
`{"error", "kind", "exit_code", "hint"}`, where `kind` is the error class's code
(`not_found`, `capacity`, `usage`, ...; `internal` for a bug) and `exit_code` what
the CLI would exit with. Nothing a client sends can crash the server. Read-only tools
say so (`readOnlyHint`), tools that change what runs on a GPU say they do
(`readOnlyHint: false`, and `destructiveHint` where they stop or evict something).

Works with the SDK's `MCPServer` (mcp 2.x) and `FastMCP` (mcp 1.x).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer as _Server  # mcp >= 2 (pyproject's `mcp` extra)
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from gpumod import __version__
from gpumod.errors import GpumodError
from gpumod.mcp import auth
from gpumod.ops import api as bridge

SERVER_NAME = "gpumod"
INSTRUCTIONS = (
    "gpumod manages LLM inference services (vLLM, llama.cpp, ...) on GPU hosts: the local "
    "box and rented pods. Check before you change: gpu_status, service_list, mode_status, "
    "and simulate_mode (does a mode, with services added or removed, fit in VRAM?). "
    "service_start/stop/sleep/wake and mode_switch change what runs on the GPUs."
)

Pod = Annotated[str | None, Field(
    default=None, description="Target this pod instead of the active one ('local' for this box).",
    max_length=64)]
Name = Annotated[str, Field(description="A service name, as `service_list` shows it.",
                            min_length=1, max_length=64)]
ModeName = Annotated[str, Field(description="A mode name, as `mode_list` shows it.",
                                min_length=1, max_length=64)]

READ_ONLY = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
ADDITIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True,
                           openWorldHint=False)
DESTRUCTIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True,
                              openWorldHint=False)


def tool_error(data: dict[str, Any], text: str) -> CallToolResult:
    """A tool error a client can branch on: the text for the model, the kind as data."""
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True,
                          structured_content=data)


def _errors_as_results(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run one tool; a failure becomes a tool error carrying its kind and exit code."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GpumodError as exc:
            return tool_error(exc.to_json(), exc.text())
        except Exception as exc:  # a bug, not the client's doing: say so, keep serving
            text = f"internal error: {type(exc).__name__}: {exc}"
            return tool_error({"error": text, "kind": "internal", "exit_code": 70}, text)
    return run


def build_server() -> Any:
    """The MCP server with every gpumod tool registered."""
    server = _Server(SERVER_NAME, instructions=INSTRUCTIONS, version=__version__,
                     log_level="WARNING")

    def tool(annotations: ToolAnnotations) -> Callable[[Callable[..., Any]], Any]:
        return lambda fn: server.tool(annotations=annotations)(_errors_as_results(fn))

    # -- read-only ----------------------------------------------------------------

    @tool(READ_ONLY)
    def gpu_status(pod: Pod = None) -> dict[str, Any]:
        """GPUs of a host with memory total/used/free (MiB) and the processes using them,
        matched to gpumod services."""
        return bridge.gpu_status(pod)

    @tool(READ_ONLY)
    def service_list(pod: Pod = None) -> dict[str, Any]:
        """Services (deployments) with their real state: running, sleeping, starting,
        crashed, stopped or unknown. Without pod: every host."""
        return {"services": bridge.service_list(pod)}

    @tool(READ_ONLY)
    def service_status(name: Name) -> dict[str, Any]:
        """One service: its spec (engine, model, port, GPUs, args) and its real state."""
        return bridge.service_status(name)

    @tool(READ_ONLY)
    def gateway_status(pod: Pod = None) -> dict[str, Any]:
        """The host's gateway (one keyed OpenAI endpoint): its URL and state, and each
        model's state (ready, sleeping, stopped, starting), idle seconds and idle TTL."""
        return bridge.gateway_status(pod)

    @tool(READ_ONLY)
    def mode_list(pod: Pod = None) -> dict[str, Any]:
        """Modes (named sets of services) defined for a host."""
        return {"modes": bridge.mode_list(pod)}

    @tool(READ_ONLY)
    def mode_status(pod: Pod = None) -> dict[str, Any]:
        """The current mode of a host and the state of its services."""
        return bridge.mode_status(pod)

    @tool(READ_ONLY)
    def mode_verify(mode: ModeName) -> dict[str, Any]:
        """Whether every service of MODE is running and healthy, and which are not."""
        return bridge.mode_verify(mode)

    @tool(READ_ONLY)
    def simulate_mode(
        mode: Annotated[str | None, Field(description="Mode to start from (optional).",
                                          max_length=64)] = None,
        add: Annotated[list[str], Field(description="Services to add to the mode.",
                                        max_length=32)] = [],  # noqa: B006
        remove: Annotated[list[str], Field(description="Services to leave out.",
                                           max_length=32)] = [],  # noqa: B006
        contexts: Annotated[dict[str, int], Field(
            description="Context length (tokens) per service, e.g. {\"chat\": 16384}.")] = {},  # noqa: B006
        pod: Pod = None,
    ) -> dict[str, Any]:
        """Pre-flight VRAM check: would MODE, with services added or removed and these
        contexts, fit on the host's GPUs? Shows per-GPU totals and alternatives when it
        does not fit. Changes nothing."""
        return bridge.simulate_mode(mode, add, remove, contexts, pod)

    @tool(ToolAnnotations(readOnlyHint=True, openWorldHint=True))
    def model_info(model: Annotated[str, Field(
            description="Hugging Face id (owner/name), model folder or .gguf path.",
            min_length=1, max_length=300)]) -> dict[str, Any]:
        """Facts of a model: parameters, weights size, layers, attention, context, quantization."""
        return bridge.model_info(model)

    @tool(ToolAnnotations(readOnlyHint=True, openWorldHint=True))
    def model_estimate(
        model: Annotated[str, Field(description="Hugging Face id, folder or .gguf path.",
                                    min_length=1, max_length=300)],
        engine: Literal["vllm", "llamacpp"] = "vllm",
        context: Annotated[int | None, Field(description="Context length in tokens.",
                                             gt=0, le=10_000_000)] = None,
        gpu: Annotated[str | None, Field(description="GPU type, e.g. H100-80GB (default: "
                                                     "the host's GPUs).", max_length=64)] = None,
        args: Annotated[list[str], Field(description="Extra engine args, e.g. "
                                                     "[\"--kv-cache-dtype\", \"fp8\"].",
                                         max_length=64)] = [],  # noqa: B006
        pod: Pod = None,
    ) -> dict[str, Any]:
        """Per-GPU VRAM estimate (weights, KV cache, activations, CUDA graphs) for serving a
        model with an engine."""
        return bridge.model_estimate(model, engine, context, gpu, args, pod)

    @tool(ToolAnnotations(readOnlyHint=True, openWorldHint=True))
    def plan_with_ai(
        prompt: Annotated[str, Field(description="What you want, e.g. 'add a reranker to my "
                                                 "code mode'.", min_length=1, max_length=4000)],
        llm: Annotated[str | None, Field(description="A deployment to ask (default: "
                                                     "GPUMOD_LLM_BASE_URL / GPUMOD_LLM_MODEL).",
                                         max_length=64)] = None,
        pod: Pod = None,
    ) -> dict[str, Any]:
        """Ask an LLM to propose a change (a mode with services and contexts). The proposal is
        checked by the simulator before it is returned. Nothing is applied."""
        from gpumod.ops import planning

        endpoint = planning.resolve_endpoint(llm=llm)
        return planning.plan(prompt, endpoint, pod=pod).to_json()

    # -- mutating --------------------------------------------------------------------

    @tool(ADDITIVE)
    def service_start(name: Name) -> dict[str, Any]:
        """Start a defined service and wait until it is healthy."""
        return bridge.service_start(name)

    @tool(DESTRUCTIVE)
    def service_stop(name: Name) -> dict[str, Any]:
        """Stop a service (its GPU memory is freed)."""
        return bridge.service_stop(name)

    @tool(DESTRUCTIVE)
    def service_sleep(
        name: Name,
        level: Annotated[Literal["l1", "l2"] | None, Field(
            description="vLLM sleep level (default: the service's own).")] = None,
    ) -> dict[str, Any]:
        """Put a service to sleep to free its GPU memory (vLLM sleep, llama.cpp router unload)."""
        return bridge.service_sleep(name, level)

    @tool(ADDITIVE)
    def service_wake(name: Name) -> dict[str, Any]:
        """Wake a sleeping service."""
        return bridge.service_wake(name)

    @tool(DESTRUCTIVE)
    def mode_switch(mode: ModeName) -> dict[str, Any]:
        """Switch the host to MODE: pre-flight VRAM check, stop or sleep what leaves, start or
        wake what enters, health gate; rolls back to the previous mode on failure."""
        return bridge.mode_switch(mode)

    return server


TOOL_NAMES = (
    "gpu_status", "service_list", "service_status", "gateway_status", "mode_list",
    "mode_status", "mode_verify",
    "simulate_mode", "model_info", "model_estimate", "plan_with_ai", "service_start",
    "service_stop", "service_sleep", "service_wake", "mode_switch",
)


def serve(transport: str = "stdio", *, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the server until the client goes away (stdio) or Ctrl+C (http).

    HTTP needs a bearer key from the environment (gpumod.mcp.auth): refused without one.
    """
    import anyio

    if transport not in ("stdio", "http"):
        raise ValueError(transport)
    key = auth.key_from_env() if transport == "http" else None
    server = build_server()
    if key is None:
        anyio.run(server.run_stdio_async)
        return
    import inspect

    import uvicorn

    make_app = server.streamable_http_app
    # mcp 2.x takes the host (DNS rebinding protection); 1.x reads it from its settings
    if "host" in inspect.signature(make_app).parameters:
        app = make_app(host=host)
    else:
        server.settings.host, server.settings.port = host, port
        app = make_app()
    config = uvicorn.Config(auth.BearerAuth(app, key), host=host, port=port,
                            log_level="warning")
    anyio.run(uvicorn.Server(config).serve)
