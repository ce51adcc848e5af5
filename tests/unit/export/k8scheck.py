"""Offline validation of exported manifests (no cluster, no network).

- built-in kinds: `kubernetes-validate` against the Kubernetes JSON schemas (strict:
  unknown fields are errors);
- LeaderWorkerSet: its top-level fields against the schema shipped in
  gpumod/export/schemas, its leader and worker templates as Kubernetes PodTemplates,
  its volumeClaimTemplates as PersistentVolumeClaims.
"""

from __future__ import annotations

from typing import Any

import yaml

K8S_VERSION = "1.30"   # the oldest Kubernetes these manifests are meant for


def load(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def validate_builtin(obj: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def validate_lws(obj: dict[str, Any]) -> None:
    import jsonschema

    from gpumod.export.kubernetes import lws_schema

    jsonschema.Draft202012Validator(lws_schema()).validate(obj)
    lwt = obj["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        if role in lwt:
            validate_builtin({"apiVersion": "v1", "kind": "PodTemplate",
                              "metadata": {"name": f"{obj['metadata']['name']}-{role}"},
                              "template": lwt[role]})
    for claim in lwt.get("volumeClaimTemplates", []):
        validate_builtin({"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim})


def validate_all(objects: list[dict[str, Any]]) -> list[str]:
    """Validate every object; returns their kinds in order."""
    assert objects, "no objects"
    for obj in objects:
        if obj["kind"] == "LeaderWorkerSet":
            validate_lws(obj)
        else:
            validate_builtin(obj)
    return [o["kind"] for o in objects]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def engine_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec["containers"] if c["name"] == "engine"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
