"""`gpumod models` (and `pi start` without a model): the known models and what fits a host."""

from __future__ import annotations

from typing import Any

from gpumod.hosts.model import Host
from gpumod.store.db import Store


def fit_rows(host: Host) -> list[dict[str, Any]]:
    """One row per known model: whether one of its configurations fits the host's GPUs."""
    from gpumod.catalog.models import load_catalog, select_config

    rows = []
    for model in load_catalog().values():
        selection = select_config(model, host.gpus)
        rows.append({
            "id": model.id, "name": model.name, "engine": model.engine,
            "fits": selection is not None,
            "config": selection.config.label() if selection else None,
            "type_matched": bool(selection and selection.type_matched),
            "configs": [c.label() for c in model.configs],
            "min_engine_version": (selection.min_engine_version if selection
                                   else model.min_engine_version),
            "notes": (selection.notes if selection else model.notes) or "",
            "source": model.source,
        })
    return rows


def known_models(store: Store, pod: str | None) -> tuple[Host, list[dict[str, Any]]]:
    """The target host (GPUs read where services are placed) and its fit rows."""
    from gpumod.ops.inventory import target_host

    host = target_host(store, pod)
    return host, fit_rows(host)
