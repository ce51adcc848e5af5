"""Facts from the Hugging Face Hub: config.json and safetensors metadata."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpumod.errors import ConfigError, NotFoundError, TransportError, UsageError
from gpumod.planner.facts.config import facts_from_config
from gpumod.planner.facts.model import DTYPE_BYTES, ModelFacts


class HubClient:
    """Reads a repo's config.json and file metadata through huggingface_hub.

    ``huggingface_hub`` honours ``HF_TOKEN``/``HF_ENDPOINT``; tests inject an
    httpx transport with ``huggingface_hub.set_client_factory``.
    """

    def model_info(self, repo: str) -> dict[str, Any]:
        from huggingface_hub import HfApi

        info = _hub_call(repo, lambda: HfApi().model_info(repo, files_metadata=True))
        siblings = {s.rfilename: int(s.size or 0) for s in (info.siblings or [])}
        st = info.safetensors
        return {
            "id": info.id,
            "siblings": siblings,
            "safetensors": ({"parameters": dict(st.parameters or {}), "total": st.total}
                            if st else None),
            "gated": getattr(info, "gated", None),
            "pipeline_tag": info.pipeline_tag,
        }

    def file_json(self, repo: str, filename: str) -> Any:
        from huggingface_hub import get_session, hf_hub_url
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

        def fetch() -> Any:
            response = get_session().get(hf_hub_url(repo, filename), headers=build_hf_headers(),
                                         follow_redirects=True, timeout=30)
            hf_raise_for_status(response)
            return response.json()

        return _hub_call(repo, fetch, filename=filename)

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        from huggingface_hub import HfApi

        models = _hub_call(query, lambda: list(HfApi().list_models(search=query, limit=limit,
                                                                   sort="downloads")))
        return [{"id": m.id, "downloads": m.downloads, "likes": m.likes,
                 "pipeline_tag": m.pipeline_tag, "library": m.library_name} for m in models]


def _http_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(HTTPStatusError classes, HTTPError classes) of httpx and of httpx2.

    huggingface_hub >= 1.x talks through `httpx2` (a separate package whose exceptions
    are not httpx's); tests and older hubs use `httpx`. Both must map to typed errors.
    """
    import importlib

    status: list[type[BaseException]] = []
    other: list[type[BaseException]] = []
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        status.append(module.HTTPStatusError)
        other.append(module.HTTPError)
    return tuple(status), tuple(other)


def _hub_call(repo: str, call: Callable[[], Any], filename: str | None = None) -> Any:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    what = f"{repo}/{filename}" if filename else repo
    status_errors, http_errors = _http_errors()
    # the server answered with an error status / no answer at all
    answered: tuple[type[BaseException], ...] = (HfHubHTTPError, *status_errors)
    unanswered: tuple[type[BaseException], ...] = (*http_errors, OSError)
    try:
        return call()
    except GatedRepoError as exc:
        raise UsageError(f"{repo} is gated on Hugging Face",
                         hint="accept its licence on huggingface.co and set HF_TOKEN") from exc
    except RepositoryNotFoundError as exc:
        raise NotFoundError(f"no model {repo!r} on Hugging Face",
                            hint="check the id (owner/name); private models need HF_TOKEN; "
                                 "`gpumod model search WORDS` finds ids") from exc
    except EntryNotFoundError as exc:
        raise NotFoundError(f"{what} not found on Hugging Face") from exc
    except OfflineModeIsEnabled as exc:
        raise TransportError("Hugging Face is unreachable: HF_HUB_OFFLINE is set",
                             hint="unset HF_HUB_OFFLINE, or give a local model folder or GGUF"
                             ) from exc
    except answered as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 404 and not filename:
            raise NotFoundError(f"no model {repo!r} on Hugging Face",
                                hint="check the id (owner/name); private models need HF_TOKEN; "
                                     "`gpumod model search WORDS` finds ids") from exc
        if status == 404:
            raise NotFoundError(f"{what} not found on Hugging Face") from exc
        if status in (401, 403):
            raise UsageError(f"Hugging Face refused {what} ({status})",
                             hint="set HF_TOKEN to a token that can read this repo") from exc
        raise TransportError(f"Hugging Face answered {status} for {what}") from exc
    except unanswered as exc:
        from gpumod.hf_errors import network_cause

        chain = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e)
        cause = network_cause(chain) or type(exc).__name__
        raise TransportError(f"cannot reach Hugging Face for {what}: {cause}",
                             hint="check the network (or HF_ENDPOINT); facts fetched once are "
                                  "cached, and a local folder or GGUF works offline") from exc


def facts_from_hub(repo: str, client: HubClient | None = None) -> ModelFacts:
    client = client or HubClient()
    info = client.model_info(repo)
    siblings: dict[str, int] = info.get("siblings") or {}
    if "config.json" not in siblings:
        ggufs = [n for n in siblings if n.endswith(".gguf")]
        hint = ("this repo holds GGUF files: download one and pass its path"
                if ggufs else "the repo has no config.json")
        raise ConfigError(f"{repo}: no config.json in the repository", hint=hint)
    facts = facts_from_config(client.file_json(repo, "config.json"), key=repo, source="hf")
    facts.files = {n: s for n, s in siblings.items()
                   if n.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf"))}
    st = info.get("safetensors") or {}
    params: dict[str, int] = st.get("parameters") or {}
    if params:
        facts.param_count = int(sum(params.values()))
        facts.param_count_source = "hub safetensors metadata"
        facts.weight_bytes = int(sum(int(n) * DTYPE_BYTES.get(d, 2) for d, n in params.items()))
        facts.weight_bytes_source = "hub safetensors metadata (parameters per dtype)"
    else:
        shards = sum(s for n, s in siblings.items() if n.endswith(".safetensors"))
        if shards:
            facts.weight_bytes = shards
            facts.weight_bytes_source = "safetensors file sizes"
        else:
            facts.notes.append("no safetensors on the Hub: size estimated from config.json")
    return facts
