"""The gateway's route table (ops/gateway_routes.py) and settings (ops/gateway_config.py)."""

from __future__ import annotations

import pytest

from gpumod.errors import ConfigError
from gpumod.ops.gateway_config import GatewayConfig
from gpumod.ops.gateway_routes import Route, Router


def test_router_precedence_and_upstream_names():
    a = Route("chat", "org/model-a", "http://127.0.0.1:1", aliases=("model-b", "fast"))
    b = Route("model-b", "org/model-b", "http://127.0.0.1:2")
    r = Route("router", "alpha", "http://127.0.0.1:3", aliases=("beta",),
              backend_models=("beta",))
    router = Router([a, b, r])
    # a service name wins over another service's alias
    assert router.resolve("model-b") is b
    assert router.resolve("fast") is a and router.resolve("chat") is a
    assert router.resolve("nope") is None
    assert router.known() == ["alpha", "chat", "model-b", "org/model-a", "org/model-b", "router"]
    # the engine gets its own name; a router's models pass through unchanged
    assert a.upstream_name("fast") == "org/model-a"
    assert a.upstream_name("org/model-a") == "org/model-a"
    assert r.upstream_name("beta") == "beta" and r.upstream_name("router") == "alpha"
    assert Route.from_json(a.to_json()) == a


def test_config_round_trip_and_unknown_settings():
    config = GatewayConfig(port=9000, default_ttl=60)
    assert GatewayConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="unknown gateway setting"):
        GatewayConfig.from_json({"port": 1, "nope": 2})


def test_routes_come_from_the_records(store):
    """What the gateway knows of each service: names, loopback address, key file, memory,
    TTL (own, else the host default), sleep; a deployment across pods never idles out."""
    from gpumod.ops.addresses import service_dir
    from gpumod.ops.gateway_routes import routes
    from gpumod.ops.hosts import get_host
    from gpumod.spec import ServiceSpec
    from tests.support.store import define_service

    define_service(store, ServiceSpec(
        "chat", "local", "vllm", "Qwen/Qwen3-8B", 8101, gpus=(0,), sleep_mode="l1",
        args=("--gpu-memory-utilization", "0.3"),
        extra={"aliases": ["gpt-4o"], "idle_ttl": 60.0}))
    define_service(store, ServiceSpec("emb", "local", "command", "m", 8102,
                                      args=("serve", "{port}"), vram_mib=2048))
    define_service(store, ServiceSpec("big", "local", "vllm", "org/big", 8103, gpus=(1,),
                                      extra={"multinode": {"pods": ["local", "dc2"]}}))
    table = {r.service: r for r in routes(store, "local", default_ttl=300.0)}
    chat, emb, big = table["chat"], table["emb"], table["big"]
    assert (chat.served_model, chat.aliases, chat.backend) == \
        ("Qwen/Qwen3-8B", ("gpt-4o",), "http://127.0.0.1:8101")
    assert chat.key_file == f"{service_dir(get_host(store, 'local'), 'chat')}/secrets.env"
    assert (chat.key_var, chat.memory_share, chat.can_sleep, chat.ttl) == \
        ("VLLM_API_KEY", 0.3, True, 60.0)
    assert (emb.need_mib, emb.can_sleep, emb.ttl, emb.memory_share) == (2048, False, 300.0, None)
    assert big.ttl is None  # started only by `pi start --pods`: nothing could bring it back
