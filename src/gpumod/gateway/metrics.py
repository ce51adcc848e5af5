"""Prometheus metrics of the gateway, in the text exposition format (no client library).

- gpumod_gateway_requests_total{model,code}                    counter
- gpumod_gateway_request_duration_seconds{model}               histogram (whole request)
- gpumod_gateway_time_to_first_byte_seconds{model}             histogram (incl. waking)
- gpumod_gateway_activation_seconds{model,kind,result}         histogram (wake / start)
- gpumod_gateway_evictions_total{model,action}                 counter (sleeping / stopped)
- gpumod_gateway_prompt_tokens_total{model}, ..._completion_tokens_total{model}
                                                               counters, when the engine
                                                               reports usage
- gpumod_gateway_requests_in_flight{model}, ..._requests_queued{model}   gauges
- gpumod_gateway_model_state{model,state}                      1 for the current state
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ACTIVATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
STATES = ("ready", "sleeping", "stopped", "starting", "waking", "resting", "unhealthy",
          "unknown")


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {self.total:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.duration: dict[str, Histogram] = {}
        self.first_byte: dict[str, Histogram] = {}
        self.activations: dict[tuple[str, str, str], Histogram] = {}
        self.evictions: dict[tuple[str, str], int] = defaultdict(int)
        self.prompt_tokens: dict[str, int] = defaultdict(int)
        self.completion_tokens: dict[str, int] = defaultdict(int)

    def request(self, model: str, status: int, seconds: float) -> None:
        self.requests[(model, status)] += 1
        self.duration.setdefault(model, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def first_byte_after(self, model: str, seconds: float) -> None:
        self.first_byte.setdefault(model, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def activation(self, model: str, kind: str, result: str, seconds: float) -> None:
        self.activations.setdefault((model, kind, result),
                                    Histogram(ACTIVATION_BUCKETS)).observe(seconds)

    def evicted(self, model: str, action: str, seconds: float) -> None:
        self.evictions[(model, action)] += 1

    def usage(self, model: str, usage: Any) -> None:
        """Token counts from an OpenAI `usage` object (chat/completions or responses)."""
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        if isinstance(prompt, int):
            self.prompt_tokens[model] += prompt
        if isinstance(completion, int):
            self.completion_tokens[model] += completion

    def render(self, slots: list[dict[str, Any]]) -> str:
        p = "gpumod_gateway"
        out = [f"# TYPE {p}_requests_total counter"]
        out += [f'{p}_requests_total{{model="{_label(m)}",code="{c}"}} {n}'
                for (m, c), n in sorted(self.requests.items())]
        out.append(f"# TYPE {p}_request_duration_seconds histogram")
        for m, h in sorted(self.duration.items()):
            out += h.lines(f"{p}_request_duration_seconds", f'model="{_label(m)}"')
        out.append(f"# TYPE {p}_time_to_first_byte_seconds histogram")
        for m, h in sorted(self.first_byte.items()):
            out += h.lines(f"{p}_time_to_first_byte_seconds", f'model="{_label(m)}"')
        out.append(f"# TYPE {p}_activation_seconds histogram")
        for (m, kind, result), h in sorted(self.activations.items()):
            out += h.lines(f"{p}_activation_seconds",
                           f'model="{_label(m)}",kind="{kind}",result="{result}"')
        out.append(f"# TYPE {p}_evictions_total counter")
        out += [f'{p}_evictions_total{{model="{_label(m)}",action="{a}"}} {n}'
                for (m, a), n in sorted(self.evictions.items())]
        for name, table in (("prompt_tokens", self.prompt_tokens),
                            ("completion_tokens", self.completion_tokens)):
            out.append(f"# TYPE {p}_{name}_total counter")
            out += [f'{p}_{name}_total{{model="{_label(m)}"}} {n}' for m, n in sorted(table.items())]
        out.append(f"# TYPE {p}_requests_in_flight gauge")
        out += [f'{p}_requests_in_flight{{model="{_label(s["name"])}"}} {s["in_flight"]}'
                for s in slots]
        out.append(f"# TYPE {p}_requests_queued gauge")
        out += [f'{p}_requests_queued{{model="{_label(s["name"])}"}} {s["queued"]}' for s in slots]
        out.append(f"# TYPE {p}_model_state gauge")
        for s in slots:
            for state in STATES:
                value = 1 if s["state"] == state else 0
                out.append(f'{p}_model_state{{model="{_label(s["name"])}",state="{state}"}} {value}')
        return "\n".join(out) + "\n"


class UsageScanner:
    """Finds the engine's `usage` in a response without parsing every chunk.

    A JSON answer is parsed once at the end (when under 4 MiB). In an SSE stream only
    complete lines holding ``"usage"`` are parsed: the last chunk of a chat stream with
    include_usage, or the responses API's `response.completed` event.
    """

    LIMIT = 4 * 1024 * 1024

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming
        self.buf = b""
        self.skip = False
        self.usage: Any = None

    def feed(self, chunk: bytes) -> None:
        if self.skip:
            return
        data = self.buf + chunk if self.buf else chunk
        if not self.streaming:
            self.skip = len(data) > self.LIMIT
            self.buf = b"" if self.skip else data
            return
        cut = data.rfind(b"\n")
        if cut < 0:
            self.buf = data[-65536:]
            return
        complete, self.buf = data[:cut], data[cut + 1:]
        if b'"usage"' in complete:
            for line in complete.split(b"\n"):
                if b'"usage"' in line:
                    self._parse(line[5:] if line.startswith(b"data:") else line)

    def finish(self) -> Any:
        if self.buf and b'"usage"' in self.buf:
            self._parse(self.buf[5:] if self.buf.startswith(b"data:") else self.buf)
        self.buf = b""
        return self.usage

    def _parse(self, raw: bytes) -> None:
        try:
            obj = json.loads(raw)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        usage = obj.get("usage")
        if usage is None and isinstance(obj.get("response"), dict):
            usage = obj["response"].get("usage")
        if isinstance(usage, dict):
            self.usage = usage
