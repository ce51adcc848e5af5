"""Sleep capabilities (small mixins per engine) and the checks that prove them.

- ``VLLMSleep``: levels 1 and 2 through vLLM's dev endpoints (``POST /sleep?level=N``,
  ``POST /wake_up``, ``GET /is_sleeping``). Level 2 discards the weights, so its wake is
  ``wake_up?tags=weights`` -> ``POST /collective_rpc {"method": "reload_weights"}`` ->
  ``wake_up?tags=kv_cache`` -> ``POST /reset_prefix_cache``. The endpoints exist only with
  ``VLLM_SERVER_DEV_MODE=1`` and have no authentication, so ``prepare_vllm_launch`` forces
  the engine onto 127.0.0.1 (and adds ``--enable-sleep-mode``).
- ``RouterSleep``: llama.cpp's ``llama-server`` router mode. Sleep unloads the model(s)
  (``POST /models/unload``), wake loads one (``POST /models/load``); both wait until
  ``GET /models`` really says ``unloaded`` / ``loaded``.

Nothing is believed on a 200 alone. A sleep is verified by the engine's own state
(``/is_sleeping`` or ``/models``) *and* by the GPU memory of the service's process tree
(nvidia-smi on the host) really dropping; a wake by ``/health`` and a one-token canary
chat request. HTTP requests run *on the service's host* (a tiny fixed Python script over
the host's transport), because the dev endpoints listen on the host's loopback only; the
API key, when the service has one, is read there from the service's 0600 env file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpumod.errors import EngineError, UsageError
from gpumod.hosts.transports.base import Transport

# ---------------------------------------------------------------------------- HTTP on the host

# One HTTP call from the host itself: {"method", "url", "body", "timeout", "key_file",
# "key_vars"} -> {"status": N, "body": "..."} (status 0 = no connection). Proxies are
# ignored: the target is always the host's own loopback. Shipped as source so that the
# same code runs on a pod (`python3 -c HTTP_SCRIPT`, request on stdin) and, for the local
# host, in this process (no interpreter start per call: the gateway's wakes need speed).
HTTP_FUNCTION = r"""
import json, shlex, sys, urllib.error, urllib.request
def http_call(req):
    headers = {"Content-Type": "application/json"}
    key_file = req.get("key_file")
    if key_file:
        try:
            with open(key_file) as fh:
                for line in fh:
                    name, _, value = line.strip().partition("=")
                    if name in req.get("key_vars", []) and value:
                        words = shlex.split(value)
                        if words:
                            headers["Authorization"] = "Bearer " + words[0]
                            break
        except OSError:
            pass
    body = req.get("body")
    data = body.encode() if body is not None else None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(req["url"], data=data, method=req["method"],
                                     headers=headers)
    try:
        with opener.open(request, timeout=req["timeout"]) as resp:
            return {"status": resp.status,
                    "body": resp.read(2000000).decode("utf-8", "replace")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read(20000).decode("utf-8", "replace")}
    except Exception as exc:
        return {"status": 0, "body": "", "error": type(exc).__name__ + ": " + str(exc)}
"""
HTTP_SCRIPT = HTTP_FUNCTION + "print(json.dumps(http_call(json.load(sys.stdin))))\n"
_LOCAL_CALL: list[Callable[[dict[str, Any]], dict[str, Any]]] = []


def _call_here(payload: dict[str, Any]) -> dict[str, Any]:
    """HTTP_FUNCTION run in this process (the local host's loopback)."""
    if not _LOCAL_CALL:
        namespace: dict[str, Any] = {}
        exec(compile(HTTP_FUNCTION, "<gpumod http_call>", "exec"), namespace)  # noqa: S102 - our own constant source
        _LOCAL_CALL.append(namespace["http_call"])
    return _LOCAL_CALL[0](payload)


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: str
    error: str = ""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, TypeError):
            return None

    def describe(self) -> str:
        if self.status == 0:
            return f"no answer ({self.error or 'connection failed'})"
        snippet = " ".join(self.body.split())[:160]
        return f"HTTP {self.status}" + (f": {snippet}" if snippet else "")


@dataclass(frozen=True)
class Endpoint:
    """How to reach one service from its own host."""

    transport: Transport
    port: int
    served_model: str = ""
    key_file: str | None = None                 # the service's 0600 env file on the host
    key_vars: tuple[str, ...] = ("VLLM_API_KEY", "LLAMA_API_KEY", "API_KEY", "PI_API_KEY")
    host: str = "127.0.0.1"

    def request(self, method: str, path: str, body: Any = None, *,
                timeout: float = 30) -> HttpAnswer:
        payload = {"method": method, "url": f"http://{self.host}:{self.port}{path}",
                   "body": None if body is None else json.dumps(body), "timeout": timeout,
                   "key_file": self.key_file, "key_vars": list(self.key_vars)}
        from gpumod.hosts.transports.local import LocalTransport

        if type(self.transport) is LocalTransport:
            data = _call_here(payload)
            return HttpAnswer(int(data["status"]), str(data.get("body", "")),
                              str(data.get("error", "")))
        result = self.transport.run(["python3", "-c", HTTP_SCRIPT], input=json.dumps(payload),
                                    timeout=timeout + 30)
        if result.returncode == 127:
            raise EngineError(f"{self.transport.label}: python3 is not installed on the host",
                              hint="gpumod talks to engines through python3 on their host")
        try:
            data = json.loads(result.stdout.strip().splitlines()[-1])
            return HttpAnswer(int(data["status"]), str(data.get("body", "")),
                              str(data.get("error", "")))
        except (ValueError, IndexError, KeyError, TypeError):
            detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
            raise EngineError(f"{self.transport.label}: HTTP request to port {self.port} "
                              f"failed: {detail[0]}") from None

    def expect(self, method: str, path: str, body: Any = None, *, ok: Sequence[int] = (200,),
               what: str, timeout: float = 60) -> HttpAnswer:
        answer = self.request(method, path, body, timeout=timeout)
        if answer.status not in ok:
            raise EngineError(f"{what}: {method} {path} -> {answer.describe()}")
        return answer


# ---------------------------------------------------------------------------- checks


def wait_healthy(ep: Endpoint, path: str = "/health", *, timeout: float = 300,
                 interval: float = 0.5, alive: Callable[[], bool] | None = None,
                 what: str = "service") -> float:
    """Poll the health path until 200; raise EngineError on timeout or a dead process."""
    start = time.monotonic()
    last = "no answer yet"
    while True:
        answer = ep.request("GET", path, timeout=10)
        if answer.status == 200:
            return time.monotonic() - start
        last = answer.describe()
        if alive is not None and not alive():
            raise EngineError(f"{what} exited before it became healthy (last: {last})")
        if time.monotonic() - start > timeout:
            raise EngineError(f"{what} was not healthy within {timeout:g}s (last: {last})")
        time.sleep(interval)


def canary(ep: Endpoint, *, model: str | None = None, timeout: float = 120,
           what: str = "service") -> str:
    """One one-token chat request; returns the text. Raises EngineError unless it answers."""
    body = {"model": model or ep.served_model,
            "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1,
            "temperature": 0}
    answer = ep.request("POST", "/v1/chat/completions", body, timeout=timeout)
    data = answer.json()
    if answer.status != 200 or not isinstance(data, dict) or not data.get("choices"):
        raise EngineError(f"{what}: the canary request failed: {answer.describe()}")
    message = (data["choices"][0] or {}).get("message") or {}
    return str(message.get("content") or message.get("reasoning_content") or "")


PS_ARGV = ["ps", "-e", "-o", "pid=", "-o", "ppid="]


def process_tree(transport: Transport, pid: int) -> set[int]:
    result = transport.run(PS_ARGV, timeout=30)
    result.check(f"{transport.label}: ps")
    children: dict[int, list[int]] = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, stack = {pid}, [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def tree_gpu_mib(transport: Transport, pid: int | None) -> int | None:
    """GPU memory (MiB, all GPUs) held by pid and its descendants; None if not measurable."""
    if not pid:
        return None
    from gpumod.hosts.gpus import snapshot

    snap = snapshot(transport)
    if snap is None:
        return None
    tree = process_tree(transport, pid)
    used = [p.used_mib for p in snap.processes if p.pid in tree]
    if any(u is None for u in used):
        return None
    return sum(u for u in used if u is not None)


def memory_dropped(before: int | None, after: int | None) -> bool | None:
    """Did a sleep free a real share of the memory? None when it could not be measured."""
    if before is None or after is None:
        return None
    if before <= 0:
        return True
    return before - after >= max(64, before * 0.25)


# ---------------------------------------------------------------------------- capabilities


class SleepCapable:
    """Mixin: an engine that can give its GPU memory back without stopping."""

    levels: tuple[str, ...] = ()

    def sleep(self, ep: Endpoint, level: str) -> None:
        raise NotImplementedError

    def wake(self, ep: Endpoint, level: str) -> None:
        raise NotImplementedError

    def is_sleeping(self, ep: Endpoint) -> bool | None:
        raise NotImplementedError

    def canary_model(self, ep: Endpoint) -> str:
        return ep.served_model


class VLLMSleep(SleepCapable):
    levels = ("l1", "l2")

    def sleep(self, ep: Endpoint, level: str) -> None:
        number = {"l1": 1, "l2": 2}.get(level)
        if number is None:
            raise UsageError(f"vLLM sleep level must be l1 or l2, not {level!r}")
        ep.expect("POST", f"/sleep?level={number}", what=f"vLLM sleep level {number}",
                  timeout=300)

    def wake(self, ep: Endpoint, level: str) -> None:
        if level == "l2":
            ep.expect("POST", "/wake_up?tags=weights", what="vLLM wake (weights)", timeout=300)
            answer = ep.expect("POST", "/collective_rpc", {"method": "reload_weights"},
                               what="vLLM reload_weights", timeout=600)
            data = answer.json()
            if isinstance(data, dict) and data.get("error"):
                raise EngineError(f"vLLM reload_weights: {data['error']}")
            ep.expect("POST", "/wake_up?tags=kv_cache", what="vLLM wake (kv_cache)",
                      timeout=300)
            ep.expect("POST", "/reset_prefix_cache", what="vLLM reset_prefix_cache")
        else:
            ep.expect("POST", "/wake_up", what="vLLM wake", timeout=300)

    def is_sleeping(self, ep: Endpoint) -> bool | None:
        answer = ep.request("GET", "/is_sleeping", timeout=15)
        data = answer.json()
        if answer.status == 404:
            raise EngineError("vLLM has no /is_sleeping: it runs without VLLM_SERVER_DEV_MODE=1",
                              hint="restart the service so gpumod can enable sleep mode")
        if answer.status != 200 or not isinstance(data, dict) or "is_sleeping" not in data:
            raise EngineError(f"vLLM /is_sleeping: {answer.describe()}")
        return bool(data["is_sleeping"])


class RouterSleep(SleepCapable):
    """llama-server router mode: unload/load models and wait for the real status."""

    levels = ("router",)

    def __init__(self, *, poll: float = 0.2, timeout: float = 300) -> None:
        self.poll = poll
        self.timeout = timeout

    def models(self, ep: Endpoint) -> dict[str, str]:
        answer = ep.expect("GET", "/models", what="llama-server /models", timeout=30)
        data = answer.json()
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise EngineError(f"llama-server /models: unexpected answer {answer.describe()}")
        out: dict[str, str] = {}
        for item in data["data"]:
            status = item.get("status")
            value = status.get("value") if isinstance(status, dict) else status
            out[str(item.get("id"))] = str(value or "unknown")
        return out

    def wait_status(self, ep: Endpoint, model: str, wanted: set[str]) -> str:
        deadline = time.monotonic() + self.timeout
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.models(ep).get(model, "missing")
            if status in wanted:
                return status
            if status in {"missing", "failed", "error"}:
                break
            time.sleep(self.poll)
        raise EngineError(f"llama-server: model {model!r} is {status}, expected "
                          f"{' or '.join(sorted(wanted))}")

    def loaded(self, ep: Endpoint) -> list[str]:
        return [m for m, s in self.models(ep).items() if s in {"loaded", "loading"}]

    def sleep(self, ep: Endpoint, level: str = "router") -> None:
        for model in self.loaded(ep):
            ep.expect("POST", "/models/unload", {"model": model},
                      what=f"llama-server unload {model}", timeout=120)
            self.wait_status(ep, model, {"unloaded", "sleeping"})

    def wake(self, ep: Endpoint, level: str = "router", model: str | None = None) -> None:
        model = model or self.canary_model(ep)
        status = self.models(ep).get(model)
        if status is None:
            raise EngineError(f"llama-server has no model {model!r}",
                              hint=f"known: {', '.join(self.models(ep)) or 'none'}")
        if status != "loaded":
            ep.expect("POST", "/models/load", {"model": model},
                      what=f"llama-server load {model}", timeout=120)
            self.wait_status(ep, model, {"loaded"})

    def is_sleeping(self, ep: Endpoint) -> bool | None:
        return not self.loaded(ep)

    def canary_model(self, ep: Endpoint) -> str:
        if ep.served_model:
            return ep.served_model
        models = sorted(self.models(ep))
        if not models:
            raise EngineError("llama-server router has no models in its folder")
        return models[0]


def capability_for(engine: str, sleep_mode: str) -> SleepCapable | None:
    if sleep_mode in {"l1", "l2"} and engine == "vllm":
        return VLLMSleep()
    if sleep_mode == "router" and engine == "llamacpp":
        return RouterSleep()
    return None


# ---------------------------------------------------------------------------- launch changes

DEV_MODE_ENV = "VLLM_SERVER_DEV_MODE"


def prepare_vllm_launch(argv: Sequence[str], env: dict[str, str]) -> tuple[list[str],
                                                                            dict[str, str]]:
    """What sleep needs from a vLLM launch: sleep mode on, dev mode env, loopback only."""
    from gpumod.engines.base import flag_value, has_flag, replace_flag

    args = list(argv)
    host = flag_value(args, ("--host",))
    if host not in (None, "127.0.0.1", "localhost", "::1"):
        args = replace_flag(args, ("--host",), "127.0.0.1")
    elif host is None:
        args += ["--host", "127.0.0.1"]
    if not has_flag(args, ("--enable-sleep-mode",)):
        args.append("--enable-sleep-mode")
    env = dict(env)
    env[DEV_MODE_ENV] = "1"
    alloc = env.get("PYTORCH_CUDA_ALLOC_CONF", "")
    if "expandable_segments:True" in alloc.replace(" ", ""):
        raise UsageError("vLLM sleep mode does not work with "
                         "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
                         hint="remove that variable or use --sleep none")
    return args, env


def router_argv(binary: str, models: str, *, bind: str, port: int, models_max: int = 1,
                autoload: bool = True, args: Sequence[str] = ()) -> list[str]:
    """llama-server in router mode: a folder of GGUF files, or a preset .ini file."""
    if not models.startswith("/"):
        raise UsageError(f"router mode needs an absolute folder or .ini path, not {models!r}")
    source = ["--models-preset", models] if models.endswith(".ini") else ["--models-dir", models]
    argv = [binary, *source, "--models-max", str(int(models_max)), "--host", bind,
            "--port", str(int(port))]
    if not autoload:
        argv.append("--no-models-autoload")
    return [*argv, *args]


@dataclass
class Attempt:
    step: str            # "l2", "l1", "stop", "router", "wake l1", "restart", ...
    ok: bool
    detail: str = ""


@dataclass
class SleepReport:
    service: str
    action: str                      # "sleep" | "wake"
    requested: str
    result: str = "failed"           # "asleep l1", "stopped", "awake", "restarted", "failed"
    ok: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    memory_before_mib: int | None = None
    memory_after_mib: int | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        tried = "; ".join(f"{a.step}: {'ok' if a.ok else 'failed'}"
                          + (f" ({a.detail})" if a.detail else "") for a in self.attempts)
        mem = ""
        if self.memory_before_mib is not None or self.memory_after_mib is not None:
            mem = (f", GPU memory {_mib(self.memory_before_mib)} -> "
                   f"{_mib(self.memory_after_mib)}")
        return f"{self.service}: {self.action} {self.requested} -> {self.result}{mem} [{tried}]"

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "action": self.action, "requested": self.requested,
                "result": self.result, "ok": self.ok,
                "memory_before_mib": self.memory_before_mib,
                "memory_after_mib": self.memory_after_mib, "seconds": round(self.seconds, 3),
                "attempts": [a.__dict__ for a in self.attempts]}


def _mib(value: int | None) -> str:
    return "unknown" if value is None else f"{value} MiB"
