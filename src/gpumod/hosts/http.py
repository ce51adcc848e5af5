"""HTTP requests to a service made ON its host, through the host's transport.

Engines' dev endpoints (vLLM sleep, llama.cpp router) listen on the host's loopback
only, so gpumod asks from there: on a pod a tiny fixed Python script reads the request
on stdin and prints the answer; on the local host the same function runs in-process.
The API key, when the service has one, is read on the host from the service's 0600
env file; it never crosses the connection.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gpumod.errors import EngineError
from gpumod.hosts.transports.base import Transport

# One HTTP call made from the host itself: {"method", "url", "body", "timeout", "key_file",
# "key_vars"} -> {"status": N, "body": "..."} (status 0 = no connection). Proxies are
# ignored: the target is always the host's own loopback. Kept as source so that the same
# code runs on a pod (`python3 -c HTTP_SCRIPT`, request on stdin) and, for the local host,
# in this process: no interpreter start per call (~30 ms each; a verified wake makes
# several calls, and the gateway holds a request while it wakes).
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
    """HTTP_FUNCTION run in this process (the local host's own loopback)."""
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

        if type(self.transport) is LocalTransport:  # a subclass may run commands elsewhere
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
