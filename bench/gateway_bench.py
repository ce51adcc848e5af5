"""Benchmark: through the gateway vs direct to the same backend (paired runs, ratios).

Backends, defined and started through gpumod's own lifecycle in a temporary home:
  fast     bench/gateway_upstream.py answering at once (measures the proxy alone)
  engine   the same with 100 ms of service time per request (an LLM engine's pace)
  sse      the same streaming 64 chunks 10 ms apart
  vllm     the fake vLLM, sleep level 1 (for request-to-first-token while asleep)
  llama    the real llama-server with SmolLM2-135M, when it is built and runs

The gateway runs as its own process (`python -m gpumod.gateway serve`), the load
generator (aiohttp, uvloop) in this one. Each figure is measured direct and through
the gateway one after the other (which goes first alternates between rounds), for
--rounds rounds; medians are printed.

Targets (issue 13): added p50 at 1 concurrent <= 2 ms; throughput at 64 concurrent
>= 90% of direct; an SSE stream's largest inter-chunk gap not above direct's by more
than 5 ms; a sleeping model's first token <= its wake + 100 ms.

Run:  .venv/bin/python bench/gateway_bench.py [--rounds 3] [--no-llama]
The machine is shared (2 cores): the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

KEY = "bench-gateway-key-0123456789abcdef"
BODY = {"model": "M", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


# ------------------------------------------------------------------------- load generator


class Load:
    def __init__(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None))

    async def close(self) -> None:
        await self.session.close()

    async def post(self, url: str, body: dict, key: str | None) -> bytes:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.session.post(url, json=body, headers=headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{url}: HTTP {resp.status} {data[:200]!r}")
            return data

    async def seq_p50(self, url: str, body: dict, key: str | None, n: int) -> float:
        for _ in range(10):
            await self.post(url, body, key)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await self.post(url, body, key)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    async def throughput(self, url: str, body: dict, key: str | None, workers: int,
                         each: int) -> float:
        async def worker() -> None:
            for _ in range(each):
                await self.post(url, body, key)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return workers * each / (time.perf_counter() - t0)

    async def stream_gaps(self, url: str, body: dict, key: str | None, streams: int
                          ) -> tuple[float, float]:
        """(largest inter-chunk gap, p99 gap) in ms over `streams` concurrent streams."""
        gaps: list[float] = []

        async def one() -> None:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            async with self.session.post(url, json=body, headers=headers) as resp:
                last = None
                async for _chunk in resp.content.iter_any():
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now

        await asyncio.gather(*(one() for _ in range(streams)))
        gaps.sort()
        return gaps[-1] * 1000, gaps[int(len(gaps) * 0.99)] * 1000

    async def first_token(self, url: str, body: dict, key: str | None) -> float:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        t0 = time.perf_counter()
        async with self.session.post(url, json={**body, "stream": True},
                                     headers=headers) as resp:
            async for chunk in resp.content.iter_any():
                if b'"content"' in chunk or b'"text"' in chunk:
                    took = time.perf_counter() - t0
                    await resp.read()
                    return took * 1000
        raise RuntimeError(f"{url}: no token")


# ------------------------------------------------------------------------- set-up


def setup(tmp: Path, with_llama: bool) -> dict:
    os.environ["GPUMOD_HOME"] = str(tmp / "home")
    os.environ["PI_API_KEY"] = KEY
    from gpumod.testing import install_shims, write_state

    state = tmp / "gpus.json"
    write_state(state, ["rtx4090"])
    bin_dir = install_shims(tmp / "bin", gpu_state=state)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    os.environ["GPUMOD_FAKE_GPU_STATE"] = str(state)
    os.environ["FAKE_VLLM_STARTUP_SECONDS"] = "0.2"
    from gpumod.ops import lifecycle
    from gpumod.spec import ServiceSpec
    from gpumod.store.db import open_store

    store = open_store()
    upstream = [sys.executable, str(HERE / "gateway_upstream.py"), "{port}"]
    defs = {
        "fast": ServiceSpec("fast", "local", "command", "fast", free_port(), args=tuple(upstream)),
        "engine": ServiceSpec("engine", "local", "command", "engine", free_port(),
                              args=tuple(upstream), env={"GATEWAY_BENCH_REPLY_DELAY": "0.1"}),
        "sse": ServiceSpec("sse", "local", "command", "sse", free_port(), args=tuple(upstream),
                           env={"GATEWAY_BENCH_CHUNK_DELAY": "0.01"}),
        # the gateway puts it to sleep itself, 1 s after each request (its idle TTL)
        "vllm": ServiceSpec("vllm", "local", "vllm", "fake/vllm", free_port(), gpus=(0,),
                            args=("--gpu-memory-utilization", "0.3", "--max-model-len", "1024"),
                            sleep_mode="l1", extra={"idle_ttl": 1}),
    }
    if with_llama:
        try:
            from tests.support.real import llama_server_binary, tiny_gguf

            binary, model = llama_server_binary(), tiny_gguf()
            with store.transaction() as db:
                db.execute("UPDATE hosts SET engine_env = ? WHERE name = 'local'",
                           (json.dumps({"llamacpp_binary": binary}),))
            defs["llama"] = ServiceSpec("llama", "local", "llamacpp", str(model), free_port(),
                                        args=("-c", "2048", "-t", "2"))
        except BaseException as exc:  # skip() raises outside pytest too
            print(f"llama-server: not measured ({exc})")
    started = {}
    for name, spec in defs.items():
        lifecycle.add_service(store, spec.with_(supervisor="process"))
        try:
            lifecycle.start_service(store, name, timeout=120)
            started[name] = lifecycle.get_service(store, name).port
        except Exception as exc:
            print(f"{name}: could not start ({exc}); not measured")
    return started


def start_gateway(tmp: Path) -> tuple[subprocess.Popen, int]:
    from gpumod.ops.gateway_config import GatewayConfig

    port = free_port()
    config = tmp / "gateway.json"
    config.write_text(json.dumps(GatewayConfig(port=port).to_json()))
    proc = subprocess.Popen([sys.executable, "-m", "gpumod.gateway", "serve", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc, port


def stop_all() -> None:
    from gpumod.ops import lifecycle
    from gpumod.store.db import open_store

    store = open_store()
    for spec in lifecycle.list_services(store):
        try:
            rt = lifecycle.runtime(store, spec)
            rt.supervisor.stop(rt.plan, timeout=5)
        except Exception as exc:
            print(f"stopping {spec.name}: {exc}")


# ------------------------------------------------------------------------- measuring


def gateway_state(port: int, name: str) -> str:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/gateway/status",
                                 headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        models = json.loads(resp.read())["models"]
    return next(m["state"] for m in models if m["name"] == name)


async def wait_state(port: int, name: str, state: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while gateway_state(port, name) != state:
        if time.monotonic() > end:
            raise RuntimeError(f"{name} did not become {state}")
        await asyncio.sleep(0.05)


async def measure(ports: dict, gw: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    load = Load()
    out: dict[str, list[tuple[float, float]]] = {}
    gw_url = f"http://127.0.0.1:{gw}/v1"

    def urls(name: str) -> tuple[str, str]:
        return (f"http://127.0.0.1:{ports[name]}/v1/chat/completions",
                f"{gw_url}/chat/completions")

    turn = [0]

    async def pair(label: str, fn, name: str, **kw) -> None:
        """Direct and through the gateway, the first one alternating between rounds."""
        direct, through = urls(name)
        body = {**BODY, "model": name, **kw.pop("body", {})}
        if turn[0] % 2 == 0:
            d = await fn(direct, body, KEY, **kw)
            g = await fn(through, body, KEY, **kw)
        else:
            g = await fn(through, body, KEY, **kw)
            d = await fn(direct, body, KEY, **kw)
        out.setdefault(label, []).append((d, g))

    try:
        for turn[0] in range(rounds):
            await pair("seq1 p50 ms (fast)", load.seq_p50, "fast", n=300)
            await pair("c64 req/s (fast)", load.throughput, "fast", workers=64, each=25)
            await pair("c64 req/s (engine 100 ms)", load.throughput, "engine", workers=64,
                       each=10)
            if "sse" in ports:
                async def gaps(url, body, key):
                    return (await load.stream_gaps(url, {**body, "stream": True,
                                                         "max_tokens": 64}, key, 16))[0]
                await pair("SSE max gap ms (16 streams)", gaps, "sse")
            if "llama" in ports:
                await pair("seq1 p50 ms (llama-server)", load.seq_p50, "llama", n=20)
                await pair("c8 req/s (llama-server)", load.throughput, "llama", workers=8,
                           each=3)
            if "vllm" in ports:
                engine = f"http://127.0.0.1:{ports['vllm']}"
                direct, through = urls("vllm")
                await wait_state(gw, "vllm", "sleeping")
                ttft = await load.first_token(through, {**BODY, "model": "vllm"}, KEY)
                await wait_state(gw, "vllm", "sleeping")
                # the engine's own wake and first token, behind the gateway's back; then
                # asleep again, as the gateway left it
                t0 = time.perf_counter()
                await load.post(f"{engine}/wake_up", {}, None)
                raw_wake = (time.perf_counter() - t0) * 1000
                awake_ttft = await load.first_token(direct, {**BODY, "model": "fake/vllm"}, KEY)
                await load.post(f"{engine}/sleep?level=1", {}, None)
                out.setdefault("asleep: first token ms vs engine wake + first token",
                               []).append((raw_wake + awake_ttft, ttft))
    finally:
        await load.close()
    return out


def report(results: dict[str, list[tuple[float, float]]], load_before: float) -> None:
    print(f"\nload average (1 min) before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}; "
          f"{os.cpu_count()} CPUs shared with other sessions")
    print(f"{'measure':<55}{'direct':>10}{'gateway':>10}{'diff':>10}{'ratio':>8}")
    for label, pairs in results.items():
        d = statistics.median(p[0] for p in pairs)
        g = statistics.median(p[1] for p in pairs)
        print(f"{label:<55}{d:>10.2f}{g:>10.2f}{g - d:>+10.2f}{g / d if d else 0:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-llama", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gwbench-") as folder:
        tmp = Path(folder)
        ports = setup(tmp, not args.no_llama)
        gateway, gw_port = start_gateway(tmp)
        try:
            import uvloop

            results = uvloop.run(measure(ports, gw_port, args.rounds))
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
            stop_all()
    report(results, load_before)


if __name__ == "__main__":
    main()
