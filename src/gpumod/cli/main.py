"""Entry point for both `gpumod` and `pi`.

Command modules are imported only when their command runs, so `--help` and
quick listings stay fast. Every error surfaces here, once: one line
(`error: ...`, then `hint: ...`), a non-zero exit, a traceback only with --debug.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

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


def _available(name: str) -> bool:
    module = COMMANDS[name][0].split(":")[0]
    return importlib.util.find_spec(module) is not None


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _available(name):
            return None
        module_name, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


EPILOG = """\b
Pi vocabulary:      pi pods setup dc1 "ssh root@1.2.3.4"; pi start MODEL --name N;
                    pi list; pi logs N; pi prompt N "hi"; pi stop N
gpumod vocabulary:  gpumod status; gpumod simulate --mode code --visual;
                    gpumod mode switch rag; gpumod service sleep chat
State lives in $GPUMOD_HOME (else $PI_CONFIG_DIR, else ~/.gpumod).
"""


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EPILOG)
@click.version_option(package_name="gpumod", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run LLM inference servers on GPU boxes and rented GPU pods, and make them fit."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("GPUMOD_DEBUG") == "1"


def _terminate_like_ctrl_c() -> dict:
    """SIGTERM and SIGHUP raise errors.Interrupted (a KeyboardInterrupt), so the cleanup
    Ctrl+C gets runs for them too (a half-started engine is stopped, the record tells
    the truth). Only the first raises: later ones must not cut that cleanup short.
    Returns the previous handlers (main restores them)."""
    import signal

    from gpumod.errors import Interrupted

    raised: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if raised:
            return
        raised.append(signum)
        raise Interrupted(signal.Signals(signum).name)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: leave the process's handlers alone
            break
    return previous


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "gpumod"
    if prog not in {"gpumod", "pi"}:
        prog = "gpumod"
    import signal

    previous = _terminate_like_ctrl_c()
    try:
        _run(argv, prog)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(argv: list[str], prog: str) -> None:
    from gpumod.errors import GpumodError

    try:
        cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except GpumodError as exc:
        if _debug_requested(argv):
            import traceback

            traceback.print_exc()
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        click.echo(f"interrupted ({exc})" if str(exc) else "interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as exc:
        if _debug_requested(argv):
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: run again with --debug for the traceback, and please report it",
                   err=True)
        sys.exit(70)


if __name__ == "__main__":
    main()
