"""Service and mode presets: YAML files shipped in ``catalog/data/presets/``.

Each file is one preset (``kind: service`` or ``kind: mode``) checked against a
schema (pydantic models with unknown keys forbidden, exported as JSON Schema by
``preset_json_schema()``). A bad file fails with its name and the exact key:
``presets/services/chat.yaml: port: Input should be a valid integer``.

Users may add their own presets in ``$GPUMOD_HOME/presets/{services,modes}/*.yaml``;
a user preset with the same name replaces the shipped one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpumod import paths
from gpumod.catalog.yamltext import safe_load
from gpumod.errors import ConfigError, NotFoundError, UsageError
from gpumod.spec import ENGINES, SLEEP_MODES

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouterSettings(_Strict):
    models_max: int = Field(1, ge=1, le=64)
    autoload: bool = True


class ServicePreset(_Strict):
    kind: Literal["service"]
    name: str = Field(pattern=_NAME_PATTERN)
    description: str = ""
    engine: Literal["vllm", "llamacpp", "command", "docker"]
    model: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    sleep: Literal["none", "l1", "l2", "router"] = "none"
    idle_ttl: int | None = Field(None, ge=10, description="seconds idle before `watch` sleeps it")
    health_path: str = Field("/health", pattern=r"^/[A-Za-z0-9._~/?=&%-]*$")
    depends_on: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    gpus: list[int] | None = None
    vram_mib: int | None = Field(None, ge=1)
    docker: dict[str, Any] | None = None
    router: RouterSettings | None = None
    tags: list[str] = Field(default_factory=list)
    min_engine_version: str | None = None
    notes: str = ""

    @field_validator("depends_on")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        import re

        for item in value:
            if not re.fullmatch(_NAME_PATTERN, item):
                raise ValueError(f"invalid service name {item!r}")
        return value

    @field_validator("args", "model")
    @classmethod
    def _one_line(cls, value: Any) -> Any:
        for item in value if isinstance(value, list) else [value]:
            if any(ord(c) < 32 or ord(c) == 127 for c in item):
                raise ValueError(f"{item[:30]!r} contains a newline or control character")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for key, item in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"invalid environment variable name {key!r}")
            if any(ord(c) < 32 or ord(c) == 127 for c in str(item)):
                raise ValueError(f"value of {key} contains a newline or control character")
        return value

    def check(self) -> None:
        """Cross-field rules the schema alone cannot say."""
        if self.engine == "docker" and not self.docker:
            raise ValueError("docker: a docker service needs a 'docker' section (image, port)")
        if self.engine != "docker" and self.docker:
            raise ValueError("docker: only for engine docker")
        if self.sleep in {"l1", "l2"} and self.engine != "vllm":
            raise ValueError("sleep: levels l1/l2 are vLLM's; use router for llama.cpp or none")
        if self.sleep == "router" and self.engine != "llamacpp":
            raise ValueError("sleep: router is llama.cpp's router mode")
        if self.router and self.sleep != "router":
            raise ValueError("router: only with sleep: router")
        if self.engine == "docker":
            from gpumod.engines.docker import parse_config

            try:
                parse_config(self.docker)
            except UsageError as exc:
                raise ValueError(exc.message) from None


class ModePreset(_Strict):
    kind: Literal["mode"]
    name: str = Field(pattern=_NAME_PATTERN)
    description: str = ""
    services: list[str] = Field(default_factory=list)
    sleep_on_idle: list[str] = Field(default_factory=list)

    def check(self) -> None:
        import re

        for item in [*self.services, *self.sleep_on_idle]:
            if not re.fullmatch(_NAME_PATTERN, item):
                raise ValueError(f"services: invalid service name {item!r}")
        stray = set(self.sleep_on_idle) - set(self.services)
        if stray:
            raise ValueError(f"sleep_on_idle: not in services: {', '.join(sorted(stray))}")
        if len(set(self.services)) != len(self.services):
            raise ValueError("services: a service is listed twice")


Preset = ServicePreset | ModePreset
assert set(ENGINES) == {"vllm", "llamacpp", "command", "docker"}
assert set(SLEEP_MODES) == {"none", "l1", "l2", "router"}


@dataclass(frozen=True)
class Loaded:
    preset: Preset
    source: str          # "builtin" or the user folder
    path: str


def builtin_index() -> list[dict[str, Any]]:
    """The shipped presets, checked, as JSON data (what data/presets.json holds)."""
    return [item.preset.model_dump(mode="json") for item in _builtin()]


def preset_json_schema() -> dict[str, Any]:
    return {"service": ServicePreset.model_json_schema(), "mode": ModePreset.model_json_schema()}


def _format_error(where: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p not in {"function-after"})
    msg = first.get("msg", "invalid").removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {loc or 'top level'}: {msg}{more}"


def parse_preset(text: str, where: str) -> Preset:
    """Parse and check one preset file's text; ConfigError names the file and the key."""
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}:{line} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a preset is a mapping with kind: service|mode")
    kind = data.get("kind")
    model: type[ServicePreset] | type[ModePreset]
    if kind == "service":
        model = ServicePreset
    elif kind == "mode":
        model = ModePreset
    else:
        raise ConfigError(f"{where}: kind: must be 'service' or 'mode', got {kind!r}")
    try:
        preset = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(where, exc), hint="see `gpumod preset schema`") from None
    try:
        preset.check()
    except (ValueError, UsageError) as exc:
        message = exc.message if isinstance(exc, UsageError) else str(exc)
        raise ConfigError(f"{where}: {message}", hint="see `gpumod preset schema`") from None
    return preset


def _builtin_files() -> Iterable[tuple[str, str]]:
    root = resources.files("gpumod.catalog").joinpath("data", "presets")
    for sub in ("services", "modes"):
        folder = root.joinpath(sub)
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith((".yaml", ".yml")):
                yield f"presets/{sub}/{entry.name}", entry.read_text(encoding="utf-8")


def read_user_file(path: Path) -> Loaded:
    """One user preset, or ConfigError naming the file (unreadable, not UTF-8, invalid)."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                          f"offset {exc.start})", hint="save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None
    preset = parse_preset(text, where)
    if path.stem != preset.name:
        raise ConfigError(f"{where}: name: {preset.name!r} must match the file name")
    return Loaded(preset, "user", where)


@functools.lru_cache(maxsize=1)
def _builtin() -> tuple[Loaded, ...]:
    items = tuple(Loaded(parse_preset(text, where), "builtin", where)
                  for where, text in _builtin_files())
    for item in items:
        if Path(item.path).stem != item.preset.name:
            raise ConfigError(f"{item.path}: name: {item.preset.name!r} must match the file name")
    return items


@dataclass(frozen=True)
class Broken:
    """A user preset file that could not be used; the others still are."""

    path: Path
    error: ConfigError


def scan() -> tuple[list[Loaded], list[Broken]]:
    """Every usable preset (user presets replacing shipped ones of the same kind and
    name), and the user files that are broken: one bad file never hides the others."""
    found: dict[tuple[str, str], Loaded] = {}
    for item in _builtin():
        found[(item.preset.kind, item.preset.name)] = item
    broken: list[Broken] = []
    for path in paths.user_preset_files():
        try:
            item = read_user_file(path)
        except ConfigError as exc:
            broken.append(Broken(path, exc))
            continue
        found[(item.preset.kind, item.preset.name)] = item
    items = sorted(found.values(), key=lambda i: (i.preset.kind != "service", i.preset.name))
    return items, broken


def load_all() -> list[Loaded]:
    """Every usable preset (see scan(); broken user files are left out)."""
    return scan()[0]


def get_preset(name: str, kind: str | None = None) -> Loaded:
    """The preset of that name; a broken user file of that name raises its own error."""
    items, broken = scan()
    matches = [i for i in items if i.preset.name == name
               and (kind is None or i.preset.kind == kind)]
    for bad in broken:
        folder = {"service": "services", "mode": "modes"}.get(kind or "", bad.path.parent.name)
        if bad.path.stem == name and bad.path.parent.name == folder:
            raise bad.error
    if not matches:
        known = ", ".join(sorted({i.preset.name for i in items
                                  if kind is None or i.preset.kind == kind}))
        other = next((i.preset.kind for i in items if i.preset.name == name), None)
        hint = f"known: {known}"
        if other:  # `mode create --preset chat`: the name is right, the kind is not
            hint = (f"{name!r} is a {other} preset" + (
                f" (use it with `gpumod service add {name} --preset {name}`)"
                if other == "service" else "") + f"; known {kind} presets: {known}")
        raise NotFoundError(f"unknown {kind or ''} preset {name!r}".replace("  ", " "),
                            hint=hint)
    return matches[0]


def service_preset(name: str) -> ServicePreset:
    preset = get_preset(name, "service").preset
    assert isinstance(preset, ServicePreset)
    return preset


def mode_preset(name: str) -> ModePreset:
    preset = get_preset(name, "mode").preset
    assert isinstance(preset, ModePreset)
    return preset


def to_yaml(preset: Preset) -> str:
    data = preset.model_dump(mode="json", exclude_defaults=False)
    return yaml.safe_dump({k: v for k, v in data.items() if v not in (None, [], {}, "")},
                          sort_keys=False, allow_unicode=True)
