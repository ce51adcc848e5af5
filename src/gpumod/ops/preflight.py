"""`pi start`'s pre-flight: one round trip that tells what the host has for a start.

The engine binary (on the PATH the host's setup recorded), the model on disk or in
the host's Hugging Face cache, the tools to probe health, the ports something
listens on, and nvidia-smi's live GPU figures.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from gpumod.errors import EngineError, NotFoundError
from gpumod.hosts.gpus import GPU_FIELDS, GPUUsage, parse_gpu_csv
from gpumod.hosts.model import Host
from gpumod.hosts.transports.base import Transport
from gpumod.ops import probe as probes
from gpumod.ops.startplan import StartPlan, model_kind

# -- pre-flight: one round trip ------------------------------------------------
PREFLIGHT_SCRIPT = r"""
prefix=$1; binary=$2; kind=$3; model=$4; file=$5; hfhome=$6
if [ -n "$prefix" ]; then PATH="$prefix:$PATH"; export PATH; fi
echo "path=$PATH"
echo "home=$HOME"
if [ -n "$binary" ]; then
  b=$(command -v -- "$binary" 2>/dev/null) && echo "binary=$b"
fi
h=${hfhome:-${HF_HOME:-$HOME/.cache/huggingface}}
echo "hf_home=$h"
if command -v hf >/dev/null 2>&1; then echo "hf=hf"
elif command -v huggingface-cli >/dev/null 2>&1; then echo "hf=huggingface-cli"; fi
case $kind in
  path)
    p=$model
    case $p in "~/"*) p="$HOME/${p#"~/"}" ;; esac
    if [ -e "$p" ]; then echo "model_path=$p"; fi ;;
  hf)
    d="$h/hub/models--$(printf '%s' "$model" | sed 's|/|--|g')"
    for s in "$d"/snapshots/*/; do
      [ -d "$s" ] || continue
      if [ -n "$file" ]; then
        if [ -e "$s$file" ]; then echo "model_path=$s$file"; break; fi
      elif [ -n "$(ls -A "$s" 2>/dev/null)" ]; then echo "cached=$s"; break; fi
    done ;;
esac
command -v curl >/dev/null 2>&1 && echo "probe=curl"
command -v python3 >/dev/null 2>&1 && echo "probe=python3"
if command -v nvidia-smi >/dev/null 2>&1 &&
   g=$(nvidia-smi --query-gpu=""" + GPU_FIELDS + r""" --format=csv,noheader,nounits 2>/dev/null); then
  echo "nvidia_smi=ok"; printf '%s\n' "$g" | sed 's/^/gpu=/'
fi
""" + probes.LISTEN_LINES

@dataclass
class Preflight:
    path: str = ""
    home: str = ""
    binary: str | None = None
    hf_home: str = ""
    hf_cli: str | None = None
    model_path: str | None = None
    cached: str | None = None
    probe: list[str] = field(default_factory=list)
    listening: set[int] = field(default_factory=set)
    usage: list[GPUUsage] | None = None     # live GPU figures; None without nvidia-smi


# `key=value` lines of the preflight script -> the Preflight field they set.
_PREFLIGHT_FIELDS = {"path": "path", "home": "home", "binary": "binary", "hf_home": "hf_home",
                     "hf": "hf_cli", "model_path": "model_path", "cached": "cached"}


def parse_preflight(stdout: str) -> Preflight:
    pre = Preflight()
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        if key in _PREFLIGHT_FIELDS:
            setattr(pre, _PREFLIGHT_FIELDS[key], value)
        elif key == "probe":
            pre.probe.append(value)
        elif key == "nvidia_smi":
            pre.usage = []
    if pre.usage is not None:
        try:
            pre.usage = parse_gpu_csv("\n".join(line[4:] for line in stdout.splitlines()
                                                if line.startswith("gpu=")))
        except ValueError:
            pre.usage = None
    pre.listening = probes.parse_listening(stdout)
    return pre


def _engine_path_prefix(host: Host) -> str:
    dirs = [str(d) for d in host.engine_env.get("bin_dirs") or []]
    venv = host.engine_env.get("venv")
    if venv and not dirs:
        dirs = [posixpath.join(str(venv), "bin")]
    return ":".join(dirs)


def _hf_home(host: Host) -> str:
    return str(host.engine_env.get("hf_cache") or host.models_path or "")


def preflight(transport: Transport, host: Host, plan: StartPlan) -> Preflight:
    binary = plan.engine.binary or (plan.args[0] if plan.args else "")
    kind = model_kind(plan.engine.name, plan.model)
    model = plan.hf_repo if kind == "hf" else plan.model
    result = transport.run_script(
        PREFLIGHT_SCRIPT,
        [_engine_path_prefix(host), binary, kind, model or "", plan.gguf_file or "",
         _hf_home(host)], timeout=60)
    result.check(f"{transport.label}: pre-flight check")
    pre = parse_preflight(result.stdout)
    if binary and pre.binary is None:
        where = "this machine" if host.is_local else f"pod {host.name}"
        hint = {"vllm": f"run `pi pods setup {host.name} ...` to install vLLM",
                "llamacpp": "install llama.cpp's llama-server and put it on PATH "
                            "(scripts/build-llama-server.sh builds one)",
                }.get(plan.engine.name, "install it on the host, or give its absolute path")
        if host.is_local and plan.engine.name == "vllm":
            hint = "install vLLM (pip install vllm) and put it on PATH"
        raise EngineError(f"{binary} is not installed on {where}", hint=hint)
    if kind == "path" and pre.model_path is None:
        where = "this machine" if host.is_local else f"pod {host.name}"
        raise NotFoundError(f"model path {plan.model} does not exist on {where}",
                            hint="give an absolute path on the host, or a Hugging Face id")
    if not pre.probe:
        raise EngineError(f"{transport.label}: neither curl nor python3 is installed, so "
                          "health cannot be checked", hint="install curl on the host")
    return pre
