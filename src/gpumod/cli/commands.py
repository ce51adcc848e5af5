"""The commands of both command names: where each lives and its one-line help.

Read by the click group (gpumod.cli.group), which imports a command's module only when
that command runs, and by the fast top-level help (gpumod.cli.fasthelp), which needs no
command module and no click at all.
"""

from __future__ import annotations

# name -> ("module:attribute", one-line help). The help text lives here so
# that `--help` needs no command module.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("gpumod.cli.init_cmd:init", "First-time set-up: create the store, detect local GPUs."),
    "pods": ("gpumod.cli.pods:pods", "Register, list and switch GPU pods (hosts over SSH)."),
    "shell": ("gpumod.cli.pods:shell", "Open an interactive shell on a pod."),
    "ssh": ("gpumod.cli.pods:ssh_cmd", "Run a command on a pod; exits with its exit code."),
    "status": ("gpumod.cli.status:status", "GPUs, memory and GPU processes of a host."),
    "start": ("gpumod.cli.deploy:start", "Start a model as an OpenAI-compatible endpoint."),
    "stop": ("gpumod.cli.deploy:stop", "Stop a deployment (or all on the host)."),
    "list": ("gpumod.cli.deploy:list_cmd", "List deployments with their real state."),
    "logs": ("gpumod.cli.deploy:logs", "Show or follow a deployment's log."),
    "tunnel": ("gpumod.cli.deploy:tunnel", "Forward a local port to a deployment over SSH."),
    "models": ("gpumod.cli.models:models", "Known models and which fit the target host."),
    "model": ("gpumod.cli.model:model", "Model facts and VRAM estimates."),
    "simulate": ("gpumod.cli.simulate:simulate", "Check that services fit before deploying."),
    "prompt": ("gpumod.cli.prompt:prompt", "Test a deployment with an agentic prompt."),
    "service": ("gpumod.cli.service:service", "Define and control services."),
    "mode": ("gpumod.cli.mode:mode", "Groups of services and switching between them."),
    "preset": ("gpumod.cli.preset:preset", "Service presets shipped with gpumod."),
    "watch": ("gpumod.cli.watch:watch", "Health checks, restarts and idle sleep, in the foreground."),
    "gateway": ("gpumod.cli.gateway:gateway",
                "One keyed OpenAI endpoint per host that wakes models on request."),
    "mcp": ("gpumod.cli.mcp_cmd:mcp", "Serve gpumod's operations to agents over MCP."),
    "tui": ("gpumod.cli.tui_cmd:tui", "Live terminal dashboard."),
    "plan": ("gpumod.cli.plan:plan", "Ask a model to propose a change, checked by the simulator."),
    "export": ("gpumod.cli.export:export", "Write services as Kubernetes manifests."),
}

HELP = "Run LLM inference servers on GPU boxes and rented GPU pods, and make them fit."

EPILOG = """\b
Pi vocabulary:      pi pods setup dc1 "ssh root@1.2.3.4"; pi start MODEL --name N;
                    pi list; pi logs N; pi prompt N "hi"; pi stop N
gpumod vocabulary:  gpumod status; gpumod simulate --mode code --visual;
                    gpumod mode switch rag; gpumod service sleep chat
State lives in $GPUMOD_HOME (else $PI_CONFIG_DIR, else ~/.gpumod).
"""
