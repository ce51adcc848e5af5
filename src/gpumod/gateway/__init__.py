"""The gateway: one keyed OpenAI endpoint per host that wakes models on request.

Modules (one job each; nothing is imported here, so `gpumod --help` stays fast):

- errors     errors in OpenAI's shape, marked as the gateway's own
- auth       the one key (plain ASGI middleware, so client disconnects stay visible)
- upstream   the HTTP client to the engines (aiohttp: measured, see docs/gateway.md)
- adapter    the ONE place the gateway calls the service lifecycle (start/stop/sleep/wake)
- slots      one model's state as the gateway sees it
- scheduler  wake/start on request, joined waits, LRU eviction, per-model queues
- idle       the idle-TTL loop (the mechanism itself is gpumod.ops.idle, shared with watch)
- metrics    Prometheus counters and histograms
- app        the ASGI application (routes, proxying, streaming, disconnects)
- server     uvicorn around it, and the `python -m gpumod.gateway` entry point

A front end over gpumod.ops, like the MCP server and the TUI: it imports gpumod.ops,
gpumod.errors and its own modules only. Its settings are ops.gateway_config's (the file
`gpumod gateway start` writes); its route table (model name -> service) is built by
ops.gateway_routes from the host's service records.

Its dependencies (aiohttp, uvicorn) are the optional extra `gpumod[gateway]`.
"""
