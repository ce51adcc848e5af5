"""Which HTTP client should the gateway use upstream? Measured, not guessed.

Contenders (each as the gateway would use it: one shared session, no pool limit
below 1000, no total timeout, streaming reads):
  aiohttp       aiohttp.ClientSession over a TCPConnector
  httpx         httpx.AsyncClient (httpcore's pool)
  httpx+aiohttp httpx.AsyncClient over httpx_aiohttp.AiohttpTransport

Against the fast fake upstream (bench/gateway_upstream.py, its own process):
  seq1      p50 latency of one request at a time (ms)
  c64       requests per second with 64 concurrent workers
  stream64  SSE chunks per second with 64 concurrent streams of 64 chunks, and the
            largest gap between two chunks of one stream (ms)

Rounds alternate the contenders (paired runs); medians are printed, with ratios
to aiohttp. The machine is shared: the load average is printed with the figures.

Run: .venv/bin/python bench/gateway_clients.py [--rounds 3]
(needs `pip install httpx-aiohttp`, a contender only: the gateway does not use it)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BODY = b'{"model":"bench","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'
STREAM_BODY = b'{"model":"bench","messages":[{"role":"user","content":"hi"}],' \
              b'"stream":true,"max_tokens":64}'
HEADERS = {"content-type": "application/json", "authorization": "Bearer k"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_upstream(port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(HERE / "gateway_upstream.py"), str(port)],
                            env={**os.environ, **(env or {})})
    wait_port(port)
    return proc


def wait_port(port: int, timeout: float = 20) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class AiohttpClient:
    name = "aiohttp"

    async def __aenter__(self):
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False)
        return self

    async def __aexit__(self, *exc):
        await self.session.close()

    async def post(self, url: str, body: bytes) -> bytes:
        async with self.session.post(url, data=body, headers=HEADERS) as resp:
            return await resp.read()

    async def stream(self, url: str, body: bytes, on_chunk) -> None:
        async with self.session.post(url, data=body, headers=HEADERS) as resp:
            async for chunk in resp.content.iter_any():
                on_chunk(chunk)


class HttpxClient:
    name = "httpx"

    def transport(self):
        return None

    async def __aenter__(self):
        import httpx

        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        transport = self.transport()
        kw = {"transport": transport} if transport is not None else {"limits": limits}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10), **kw)
        return self

    async def __aexit__(self, *exc):
        await self.client.aclose()

    async def post(self, url: str, body: bytes) -> bytes:
        resp = await self.client.post(url, content=body, headers=HEADERS)
        return resp.content

    async def stream(self, url: str, body: bytes, on_chunk) -> None:
        async with self.client.stream("POST", url, content=body, headers=HEADERS) as resp:
            async for chunk in resp.aiter_raw():
                on_chunk(chunk)


class HttpxOverAiohttp(HttpxClient):
    name = "httpx+aiohttp"

    def transport(self):
        import httpx
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=httpx.Limits(max_connections=1000,
                                                     max_keepalive_connections=1000))


async def seq1(client, url: str, n: int = 300) -> float:
    for _ in range(20):
        await client.post(url, BODY)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.post(url, BODY)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def c64(client, url: str, per_worker: int = 25) -> float:
    async def worker():
        for _ in range(per_worker):
            await client.post(url, BODY)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(64)))
    return 64 * per_worker / (time.perf_counter() - t0)


async def stream64(client, url: str) -> tuple[float, float]:
    chunks = 0
    worst = 0.0

    async def one():
        nonlocal chunks, worst
        last = [time.perf_counter()]

        def seen(_c):
            nonlocal chunks, worst
            now = time.perf_counter()
            worst = max(worst, now - last[0])
            last[0] = now
            chunks += 1

        await client.stream(url, STREAM_BODY, seen)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(64)))
    return chunks / (time.perf_counter() - t0), worst * 1000


async def measure(cls, url: str) -> dict[str, float]:
    async with cls() as client:
        out = {"seq1_p50_ms": await seq1(client, url), "c64_rps": await c64(client, url)}
        rate, gap = await stream64(client, url)
        out.update(stream64_chunks_s=rate, stream64_max_gap_ms=gap)
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    port = free_port()
    upstream = start_upstream(port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    contenders = [AiohttpClient, HttpxClient, HttpxOverAiohttp]
    results: dict[str, list[dict[str, float]]] = {c.name: [] for c in contenders}
    try:
        for _ in range(args.rounds):
            for cls in contenders:
                results[cls.name].append(asyncio.run(measure(cls, url)))
    finally:
        upstream.terminate()
        upstream.wait()
    print(f"load average (1 min) after the runs: {os.getloadavg()[0]:.2f}; "
          f"{os.cpu_count()} CPUs; {args.rounds} paired rounds, medians")
    keys = ["seq1_p50_ms", "c64_rps", "stream64_chunks_s", "stream64_max_gap_ms"]
    base = {k: statistics.median(r[k] for r in results["aiohttp"]) for k in keys}
    print(f"{'client':<15}" + "".join(f"{k:>22}" for k in keys))
    for name, rows in results.items():
        cells = []
        for k in keys:
            value = statistics.median(r[k] for r in rows)
            cells.append(f"{value:>12.2f} ({value / base[k]:.2f}x)")
        print(f"{name:<15}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
