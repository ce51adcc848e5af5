"""Presets for the front ends: list, show and schema, and a mode preset made real.

`gpumod mode create NAME --preset rag` applies a shipped (or user) mode preset:
its services, the ones it sleeps on idle and its description. Each of its
services not defined yet is defined from the service preset of the same name
(as `gpumod service add NAME --preset NAME` would), on the mode's host, in the
preset's order. All or nothing: when one definition or the mode itself cannot be
recorded, the services this command defined are dropped again and the error
says what failed; what was stored before is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpumod.errors import ConflictError, GpumodError, NotFoundError, UsageError, add_hint

if TYPE_CHECKING:
    from gpumod.store.db import Store


@dataclass
class PresetList:
    items: list[dict[str, Any]]                        # each preset as JSON data + "source"
    warnings: list[str] = field(default_factory=list)  # user files that were skipped

    def to_json(self) -> list[dict[str, Any]]:
        return self.items


def list_presets(kind: str | None = None) -> PresetList:
    """Every usable preset of KIND (service, mode, or both); broken user files as warnings.

    Read from the checked index of the shipped presets (catalog.preset_index), so a
    listing imports pydantic only when there are user presets to check."""
    from gpumod.catalog.preset_index import listing

    found, broken = listing()
    return PresetList([p for p in found if kind is None or p["kind"] == kind],
                      [f"skipped {bad.error.message}" for bad in broken])


def show_preset(name: str, kind: str | None = None) -> tuple[Any, str]:
    """(the preset as loaded, its YAML text)."""
    from gpumod.catalog.presets import get_preset, to_yaml

    item = get_preset(name, kind)
    return item, to_yaml(item.preset)


def preset_schema() -> dict[str, Any]:
    from gpumod.catalog.presets import preset_json_schema

    return preset_json_schema()


@dataclass
class ModeFromPreset:
    mode: Any                                          # ops.modes.Mode
    defined: list[Any] = field(default_factory=list)   # ops.define.Added, one per new service


def create_mode_from_preset(store: Store, name: str, preset: str, *, pod: str | None = None,
                            description: str | None = None) -> ModeFromPreset:
    """The mode NAME from mode preset PRESET on the host (--pod, else the active one)."""
    from gpumod import validate
    from gpumod.catalog.presets import mode_preset, service_preset
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops import modes
    from gpumod.ops.define import AddRequest, define_service
    from gpumod.ops.services import drop, list_services

    validate.name(name, "mode name")
    p = mode_preset(preset)
    host = hosts_ops.resolve_host(store, pod).name
    try:
        modes.get_mode(store, name)
        raise ConflictError(f"mode {name!r} already exists",
                            hint="delete it first, or pick another name")
    except NotFoundError:
        pass
    where = {s.name: s.host for s in list_services(store)}
    missing = [s for s in p.services if s not in where]
    for service in p.services:
        if service in where and where[service] != host:
            raise UsageError(f"service {service} of preset {preset} runs on {where[service]}, "
                             f"not {host}", hint="a mode groups services of one host; "
                                                 "use --pod " + where[service])
    for service in missing:  # all of them known before anything is defined
        try:
            service_preset(service)
        except NotFoundError:
            raise NotFoundError(f"mode preset {preset} lists {service!r}, which is neither a "
                                f"service on {host} nor a service preset",
                                hint=f"define it first: gpumod service add {service} ...") \
                from None
    result = ModeFromPreset(mode=None)
    try:
        for service in missing:
            try:
                result.defined.append(define_service(store, AddRequest(
                    name=service, preset=service, pod=host)))
            except ConflictError as exc:  # e.g. the preset's port: --port is not ours here
                exc.hint = (f"define {service} first with its own options, e.g. `gpumod "
                            f"service add {service} --preset {service} --port N`, then "
                            "run this again")
                raise
        result.mode = modes.create_mode(
            store, name, list(p.services), host=host,
            description=p.description if description is None else description,
            sleep_on_idle=list(p.sleep_on_idle))
    except BaseException as exc:
        left = []
        for added in reversed(result.defined):  # never started: the record is all there is
            try:
                drop(store, added.spec.name)
            except GpumodError:
                left.append(added.spec.name)
        if left:
            add_hint(exc, f"defined but not dropped again: {', '.join(left)} "
                          "(`gpumod service remove NAME`)")
        raise
    return result
