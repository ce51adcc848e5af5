"""What a gateway on a pod needs there: gpumod's code, its files, the host's records.

The gateway runs ON the pod (its backends listen on the pod's loopback, vLLM's sleep
endpoints only there), driving the pod's services with the same lifecycle the CLI uses
here, through a local transport. For that:

- gpumod's own package is shipped once per version (a tar.gz over SSH stdin, unpacked
  into ``<root>/gateway/lib/<hash>/`` and put on PYTHONPATH; the version shipped
  before it is kept, older ones are removed); the pod's engine Python (the setup venv:
  vLLM brings aiohttp and uvicorn) runs it;
- the gateway's config and a *snapshot* of the host's records (GPUs, engine
  environment, the service specs, which hold no secrets) are written into
  ``<root>/gateway/``; at start the pod-side gateway loads the snapshot into the pod's
  own store (``GPUMOD_HOME=<root>``, the folder the services already live in);
- the key travels like every secret: stdin into the 0600 env file of the supervisor.

The local store stays the registry: `gpumod gateway status` and `pi list` reconcile it
with the states the pod-side gateway reports (:func:`reconcile`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import posixpath
import tarfile
from pathlib import Path
from typing import Any

from gpumod.errors import EngineError
from gpumod.hosts.model import Host
from gpumod.hosts.transports.base import Transport
from gpumod.store.db import Store

WRITE_SCRIPT = r"""
set -u
path=$1
dir=$(dirname "$path")
umask 077
mkdir -p "$dir" || exit 20
cat > "$path.tmp" || exit 21
mv "$path.tmp" "$path" || exit 22
"""

# .complete marks a whole unpack; its mtime is when that version was last shipped
HAS_LIB_SCRIPT = r"""
dir=$1; python=$2
[ -f "$dir/.complete" ] && touch "$dir/.complete" && echo present
"$python" -c 'import aiohttp, uvicorn' 2>/dev/null && echo deps
"""

# Unpack a new version, then keep it and the version shipped before it (a way back);
# older versions and unpacks abandoned over 10 minutes ago are removed.
UNPACK_SCRIPT = r"""
set -u
dir=$1
lib=$(dirname "$dir")
current=$(basename "$dir")
tmp="$dir.tmp.$$"
umask 022
rm -rf "$tmp" && mkdir -p "$tmp" || exit 20
base64 -d | tar -xzf - -C "$tmp" || { rm -rf "$tmp"; exit 21; }
: > "$tmp/.complete"
rm -rf "$dir" && mv "$tmp" "$dir" || exit 22
previous=$(find "$lib" -mindepth 2 -maxdepth 2 -name .complete -printf '%T@ %h\n' \
           | sort -rn | while read -r _ d; do
               name=$(basename "$d")
               if [ "$name" != "$current" ]; then echo "$name"; break; fi
             done)
for d in "$lib"/*; do
    [ -d "$d" ] || continue
    name=$(basename "$d")
    if [ "$name" = "$current" ] || [ "$name" = "$previous" ]; then continue; fi
    case "$name" in
        *.tmp.*) [ -n "$(find "$d" -maxdepth 0 -mmin +10)" ] || continue ;;
    esac
    rm -rf "$d"
done
exit 0
"""


def package_archive() -> tuple[str, bytes]:
    """(content hash, tar.gz of the installed gpumod package without caches)."""
    import gpumod

    root = Path(gpumod.__file__).resolve().parent
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for path in files:
            rel = path.relative_to(root.parent).as_posix()
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + data)
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return digest.hexdigest()[:16], buffer.getvalue()


def pod_python(host: Host) -> str:
    env = host.engine_env or {}
    if env.get("python"):
        return str(env["python"])
    if env.get("venv"):
        return posixpath.join(str(env["venv"]), "bin", "python")
    return "python3"


def ship_code(transport: Transport, host: Host, gateway_dir: str) -> tuple[str, str]:
    """Make gpumod's code importable on the pod; returns (python, lib folder)."""
    digest, archive = package_archive()
    lib = posixpath.join(gateway_dir, "lib", digest)
    python = pod_python(host)
    found = transport.run_script(HAS_LIB_SCRIPT, [lib, python], timeout=60)
    found.check(f"{transport.label}: checking the gateway's code")
    if "deps" not in found.stdout.split():
        raise EngineError(f"{transport.label}: {python} cannot import aiohttp and uvicorn, "
                          "which the gateway needs",
                          hint="run the gateway with the pod's engine venv (vLLM brings both; "
                               f"re-run `pi pods setup {host.name} ...`), or pip install "
                               "aiohttp uvicorn into it")
    if "present" not in found.stdout.split():
        encoded = base64.b64encode(archive).decode()
        transport.run_script(UNPACK_SCRIPT, [lib], input=encoded, timeout=120).check(
            f"{transport.label}: unpacking the gateway's code")
    return python, lib


def write_file(transport: Transport, path: str, text: str) -> None:
    """Write text to a 0600 file on the host, atomically (no secrets go this way)."""
    transport.run_script(WRITE_SCRIPT, [path], input=text, timeout=60).check(
        f"{transport.label}: writing {path}")


def snapshot(store: Store, host: Host) -> dict[str, Any]:
    """The records a pod-side gateway needs: its GPUs, engine environment and services."""
    from gpumod.ops.services import list_services

    return {"host": {"gpus": [g.to_json() for g in host.gpus],
                     "capabilities": dict(host.capabilities),
                     "engine_env": dict(host.engine_env)},
            "services": [spec.with_(host="local").to_json()
                         for spec in list_services(store, host.name)]}


def import_snapshot(store: Store, data: dict[str, Any]) -> None:
    """Load a snapshot into this machine's store as host `local` (runs on the pod).

    The service definitions become the user's; a recorded 'sleeping' already known
    here is kept when the snapshot says 'running' (this host's gateway put it to sleep
    after the user's store last heard of it). Services missing from it are forgotten.
    """
    from gpumod.hosts.model import GPU
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops import machine
    from gpumod.ops import services as records
    from gpumod.ops.definitions import dependency_order
    from gpumod.spec import ServiceSpec

    info = data.get("host") or {}
    gpus = [GPU(int(g["index"]), str(g["uuid"]), str(g["name"]), int(g["memory_mib"]))
            for g in info.get("gpus") or []]
    host = hosts_ops.update_local(store, gpus, dict(info.get("capabilities") or {}),
                                  dict(info.get("engine_env") or {}))
    specs = [ServiceSpec.from_json({**s, "host": "local"}) for s in data.get("services") or []]
    known = {s.name: s for s in records.list_services(store, "local")}
    wanted = {s.name for s in specs}
    with store.transaction():
        for name in set(known) - wanted:
            records.drop(store, name)
        for spec in specs:
            records.drop(store, spec.name)
        for spec in dependency_order(specs, specs):
            state, pid = spec.state, spec.pid
            here = known.get(spec.name)
            if here is not None and here.state == "sleeping" and state == "running":
                state, pid = here.state, here.pid
            records.reserve(store, spec, host, listening=set(), port=spec.port, state=state)
            machine.mirror(store, spec.name, state, pid=pid)


# gateway word -> recorded state in the user's store
RECORDED = {"ready": "running", "sleeping": "sleeping", "stopped": "stopped"}


def reconcile(store: Store, host: Host, models: list[dict[str, Any]]) -> list[str]:
    """Bring the local records of `host` in line with what its gateway reports."""
    from gpumod.errors import NotFoundError
    from gpumod.ops import machine
    from gpumod.ops import services as records

    changed = []
    for model in models:
        wanted = RECORDED.get(str(model.get("state")))
        if wanted is None:
            continue
        try:
            spec = records.get_service(store, str(model.get("name")))
        except NotFoundError:
            continue
        if spec.host != host.name or spec.state == wanted:
            continue
        if wanted == "stopped":
            machine.mirror(store, spec.name, "stopped", pid=None)
        else:
            machine.mirror(store, spec.name, wanted)
        store.log_event("gateway-reconcile", host=host.name, service=spec.name,
                        detail=f"{spec.state} -> {wanted}")
        changed.append(spec.name)
    return changed
