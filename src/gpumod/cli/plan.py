"""`gpumod plan "PROMPT"`: a model proposes a change; the simulator checks it; --apply applies it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from gpumod.cli.common import console, plain, pod_option, print_json

if TYPE_CHECKING:
    from gpumod.cli.textout import Console
    from gpumod.ops.planning import PlanResult


@click.command("plan", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("prompt")
@pod_option
@click.option("--llm", metavar="NAME", help="Ask one of your deployments (by name).")
@click.option("--base-url", metavar="URL",
              help="Any OpenAI-compatible endpoint (.../v1); default $GPUMOD_LLM_BASE_URL.")
@click.option("--model", "model_id", metavar="ID",
              help="Model id to ask for; default $GPUMOD_LLM_MODEL, else the endpoint's first.")
@click.option("--max-turns", type=click.IntRange(1, 100), default=12, show_default=True,
              help="Stop after this many model turns.")
@click.option("--apply", "apply_", is_flag=True,
              help="Apply a proposal that fits (after you confirm): save the mode, switch to it.")
@click.option("-y", "--yes", is_flag=True, help="With --apply: do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def plan(prompt: str, pod: str | None, llm: str | None, base_url: str | None,
         model_id: str | None, max_turns: int, apply_: bool, yes: bool, as_json: bool) -> None:
    """Ask a model to propose a change; the simulator checks it before it is shown.

    \b
    gpumod plan "add a reranker to my code mode"
    gpumod plan --llm qwen "what fits next to chat with 32K context?"
    gpumod plan --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen3-8B "..." --apply
    The model gets read-only tools (services, modes, GPU status, model info, estimates,
    simulation). Nothing changes unless you pass --apply and confirm.
    The key comes from GPUMOD_LLM_API_KEY (for --llm: else PI_API_KEY).
    """
    from gpumod.errors import CapacityError, UsageError
    from gpumod.ops import planning

    if yes and not apply_:
        raise UsageError("--yes only goes with --apply")
    endpoint = planning.resolve_endpoint(llm=llm, base_url=base_url, model=model_id)
    out = console()
    err = console(stderr=True)

    def show(step: planning.PlanStep) -> None:
        if as_json:
            return
        if step.kind == "tool_call":
            err.print(plain(f"> {step.name} {step.text}"), style="dim")
        elif step.kind == "rejected":
            err.print(plain(f"  proposal rejected: {step.text.splitlines()[0]}"), style="yellow")

    result = planning.plan(prompt, endpoint, pod=pod, max_turns=max_turns, on_step=show)
    if as_json:
        print_json(result.to_json())
    else:
        _render(out, result)
    if result.proposal is None:
        raise CapacityError("the model made no proposal",
                            hint="rephrase the request, or use a model with tool calling")
    if not result.fits:
        raise CapacityError(f"the proposal does not fit: "
                            f"{(result.simulation or {}).get('reason') or 'see above'}",
                            hint="ask again with fewer services or shorter contexts")
    if not apply_:
        if not as_json:
            out.print(plain("Nothing was changed; run again with --apply to apply it."))
        return
    if not yes and not click.confirm(f"Apply: save mode {result.proposal.mode!r} and switch "
                                     "to it?", default=False, err=True):
        raise click.exceptions.Abort()
    applied = planning.apply_plan(result.proposal, pod=pod)
    if as_json:
        print_json({"applied": applied})
    else:
        out.print(plain(f"applied: mode {result.proposal.mode} is active"))


def _render(out: Console, result: PlanResult) -> None:
    from rich.text import Text

    if result.proposal is None:
        out.print(plain(result.answer or "(no answer)"))
        return
    p = result.proposal
    verdict = Text("fits", style="green") if result.fits else Text("DOES NOT FIT", style="red")
    out.print(Text.assemble("Proposal: mode ", plain(p.mode), " (", verdict, ")"))
    out.print(Text.assemble("  services: ", plain(", ".join(p.services))))
    if p.contexts:
        out.print(Text.assemble("  contexts: ", plain(json.dumps(p.contexts))))
    if p.explanation:
        out.print(Text.assemble("  why: ", plain(p.explanation)))
    picture = (result.simulation or {}).get("picture")
    if picture:
        out.print(plain(picture))
    if not result.fits:
        for alt in (result.simulation or {}).get("alternatives", []):
            out.print(Text.assemble("  alternative: ", plain(alt.get("description", ""))))
    if result.answer:
        out.print(plain(result.answer))
