"""The known-model catalog (catalog/data/models.yaml) and the one rule that picks a config.

Rule (used by `start`, `models` and anything else that asks):

1. With ``--gpus N``: the configurations for exactly N GPUs; one written for
   this GPU type wins, else one for any type (flagged ``type_matched=False``).
2. Without: among configurations whose GPU count the host has, those written
   for this GPU type (or any type) first; then the smallest GPU count, which
   leaves the other GPUs free for more services.
3. GPU types match whole words of the GPU name ("NVIDIA H100 80GB HBM3" has
   the words H100, 80GB, HBM3): "H20" never matches an H200, unlike Pi.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpumod.errors import ConfigError, UsageError
from gpumod.hosts.model import GPU

_MODEL_KEYS = {"id", "name", "engine", "source", "notes", "min_engine_version", "configs",
               "aliases", "gguf_file"}
_CONFIG_KEYS = {"gpus", "nodes", "gpu_types", "args", "env", "notes", "min_engine_version"}


@dataclass(frozen=True)
class HardwareConfig:
    gpus: int                        # per node
    gpu_types: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    min_engine_version: str | None = None
    nodes: int = 1                   # > 1: one model across pods on Ray (`--pods`)

    def matches_type(self, gpu_name: str) -> bool:
        if not self.gpu_types:
            return True
        words = gpu_words(gpu_name)
        return any(t.upper() in words for t in self.gpu_types)

    def label(self) -> str:
        if self.gpus == 0:
            return "CPU"
        types = "/".join(self.gpu_types) if self.gpu_types else "any GPU"
        if self.nodes > 1:
            return f"{self.nodes} pods x {self.gpus}x {types}"
        return f"{self.gpus}x {types}"


@dataclass(frozen=True)
class KnownModel:
    id: str
    name: str
    engine: str
    configs: tuple[HardwareConfig, ...]
    source: str = "gpumod"
    notes: str = ""
    min_engine_version: str | None = None
    aliases: tuple[str, ...] = ()
    gguf_file: str | None = None


@dataclass(frozen=True)
class Selection:
    model: KnownModel
    config: HardwareConfig
    type_matched: bool

    @property
    def notes(self) -> str:
        return self.config.notes or self.model.notes

    @property
    def min_engine_version(self) -> str | None:
        return self.config.min_engine_version or self.model.min_engine_version


def gpu_words(name: str) -> set[str]:
    """Whole words of a GPU name, upper case, without the vendor: {'H100', '80GB', 'HBM3'}."""
    words = set(re.split(r"[\s_/,()-]+", name.upper()))
    return {w for w in words if w and w not in {"NVIDIA", "GEFORCE", "TESLA"}}


def _config(raw: dict[str, Any], where: str) -> HardwareConfig:
    unknown = set(raw) - _CONFIG_KEYS
    if unknown:
        raise ConfigError(f"catalog: {where}: unknown keys {sorted(unknown)}")
    gpus = raw.get("gpus")
    if not isinstance(gpus, int) or gpus < 0:
        raise ConfigError(f"catalog: {where}: 'gpus' must be a whole number >= 0")
    nodes = raw.get("nodes", 1)
    if not isinstance(nodes, int) or nodes < 1 or (nodes > 1 and gpus < 1):
        raise ConfigError(f"catalog: {where}: 'nodes' must be a whole number >= 1 "
                          "(and a multi-node config needs GPUs)")
    return HardwareConfig(
        gpus=gpus, gpu_types=tuple(str(t) for t in raw.get("gpu_types") or ()),
        args=tuple(str(a) for a in raw.get("args") or ()),
        env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
        notes=" ".join(str(raw.get("notes") or "").split()),
        min_engine_version=raw.get("min_engine_version"), nodes=nodes)


def parse_catalog(data: dict[str, Any]) -> dict[str, KnownModel]:
    models: dict[str, KnownModel] = {}
    for raw in data.get("models") or []:
        where = raw.get("id", "?")
        unknown = set(raw) - _MODEL_KEYS
        if unknown:
            raise ConfigError(f"catalog: {where}: unknown keys {sorted(unknown)}")
        if raw.get("engine") not in ("vllm", "llamacpp", "command"):
            raise ConfigError(f"catalog: {where}: engine must be vllm, llamacpp or command")
        configs = tuple(_config(c, f"{where} config {i}")
                        for i, c in enumerate(raw.get("configs") or []))
        if not configs:
            raise ConfigError(f"catalog: {where}: no configurations")
        model = KnownModel(
            id=raw["id"], name=raw.get("name") or raw["id"], engine=raw["engine"],
            configs=configs, source=raw.get("source", "gpumod"),
            notes=" ".join(str(raw.get("notes") or "").split()),
            min_engine_version=raw.get("min_engine_version"),
            aliases=tuple(raw.get("aliases") or ()), gguf_file=raw.get("gguf_file"))
        if model.id in models:
            raise ConfigError(f"catalog: {model.id} is listed twice")
        models[model.id] = model
    return models


DATA = Path(__file__).parent / "data"
CATALOG_YAML = DATA / "models.yaml"   # what people edit
CATALOG_JSON = DATA / "models.json"   # what gpumod reads: the same data, no YAML parser to load
                                      # (scripts/gen_catalog_data.py writes it; a test compares)


def catalog_from_yaml() -> dict[str, Any]:
    from gpumod.catalog.yamltext import safe_load

    return safe_load(CATALOG_YAML.read_text("utf-8")) or {}


@functools.lru_cache(maxsize=1)
def load_catalog() -> dict[str, KnownModel]:
    import json

    return parse_catalog(json.loads(CATALOG_JSON.read_text("utf-8")) or {})


def find_model(name: str) -> KnownModel | None:
    """A known model by HF id (case-insensitive) or alias; None when unknown."""
    catalog = load_catalog()
    if name in catalog:
        return catalog[name]
    lowered = name.lower()
    for model in catalog.values():
        if model.id.lower() == lowered or lowered in (a.lower() for a in model.aliases):
            return model
    return None


def select_config(model: KnownModel, gpus: Sequence[GPU],
                  requested: int | None = None) -> Selection | None:
    """The configuration for this host's GPUs (see the module docstring); None if none fits."""
    gpu_name = gpus[0].name if gpus else ""
    available = len(gpus)

    def typed(config: HardwareConfig) -> bool:
        return config.gpus == 0 or (bool(gpu_name) and config.matches_type(gpu_name))

    one_node = [c for c in model.configs if c.nodes == 1]
    if requested is not None:
        candidates = [c for c in one_node if c.gpus == requested]
        if requested > available:
            return None
    else:
        candidates = [c for c in one_node if c.gpus <= available]
        if available == 0:
            candidates = [c for c in candidates if c.gpus == 0]
        else:
            # On a GPU host prefer GPU configurations over CPU ones.
            on_gpu = [c for c in candidates if c.gpus > 0]
            candidates = on_gpu or candidates
    if not candidates:
        return None
    matching = [c for c in candidates if typed(c)]
    pool = matching or candidates
    best = min(pool, key=lambda c: (c.gpus, model.configs.index(c)))
    return Selection(model, best, type_matched=bool(matching))


def select_multinode(model: KnownModel, nodes: int, gpus: Sequence[GPU]) -> Selection | None:
    """The configuration for `nodes` pods with `gpus` each (one pod's GPUs), if any."""
    gpu_name = gpus[0].name if gpus else ""
    candidates = [c for c in model.configs if c.nodes == nodes and c.gpus == len(gpus)]
    matching = [c for c in candidates if gpu_name and c.matches_type(gpu_name)]
    pool = matching or candidates
    if not pool:
        return None
    return Selection(model, pool[0], type_matched=bool(matching))


def gpu_counts(model: KnownModel) -> list[int]:
    return sorted({c.gpus for c in model.configs if c.nodes == 1})


def multinode_shapes(model: KnownModel) -> list[str]:
    """'2 pods x 8 GPUs' for each multi-node configuration."""
    return [f"{c.nodes} pods x {c.gpus} GPUs" for c in model.configs if c.nodes > 1]


def require_selection(model: KnownModel, gpus: Sequence[GPU],
                      requested: int | None) -> Selection:
    selection = select_config(model, gpus, requested)
    if selection is not None:
        return selection
    counts = ", ".join(str(n) for n in gpu_counts(model))
    have = f"{len(gpus)}x {gpus[0].name}" if gpus else "no GPU"
    if not counts:
        raise UsageError(f"{model.name} runs across pods ({', '.join(multinode_shapes(model))})",
                         hint=f"pi start {model.id} --name NAME --pods POD1,POD2")
    if requested is not None:
        raise UsageError(f"{model.name} has no configuration for {requested} GPU(s) "
                         f"on this host ({have})",
                         hint=f"configurations exist for {counts} GPU(s); or pass your own "
                              "engine args after --vllm")
    raise UsageError(f"{model.name} does not fit this host ({have})",
                     hint=f"it needs {counts} GPU(s); pick a bigger pod, or pass your own "
                          "engine args after --vllm")


def parse_version(text: str) -> tuple:
    """'0.10.0rc1' -> (0, 10, 0, -1, 1); '0.10.1' -> (0, 10, 1, 0, 0)."""
    match = re.match(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.?(rc|dev|a|b)(\d+))?", text.strip())
    if not match:
        return ()
    major, minor, patch, tag, tagnum = match.groups()
    rank = {None: 0, "rc": -1, "b": -2, "a": -3, "dev": -4}[tag]
    return (int(major), int(minor or 0), int(patch or 0), rank, int(tagnum or 0))


def version_ok(installed: str | None, minimum: str | None) -> bool | None:
    """True/False when both are known; None when either is unknown."""
    if not installed or not minimum:
        return None
    have, need = parse_version(installed), parse_version(minimum)
    if not have or not need:
        return None
    return have >= need
