"""llama.cpp router mode on the real llama-server with two tiny GGUF models."""

from __future__ import annotations

import pytest

from gpumod.engines.checks import canary
from gpumod.engines.sleep import RouterSleep
from gpumod.ops import lifecycle
from gpumod.spec import ServiceSpec
from gpumod.store.db import open_store
from tests.support.real import free_port, llama_server_binary, tiny_gguf
from tests.support.services import stop_all

pytestmark = pytest.mark.llama


def test_router_load_unload_and_wake_by_request(tmp_path):
    binary = llama_server_binary()
    model = tiny_gguf()
    models = tmp_path / "models"
    models.mkdir()
    (models / "alpha.gguf").symlink_to(model)
    (models / "beta.gguf").symlink_to(model)
    store = open_store()
    import json

    with store.transaction() as db:
        db.execute("UPDATE hosts SET engine_env = ? WHERE name = 'local'",
                   (json.dumps({"llamacpp_binary": binary}),))
    lifecycle.add_service(store, ServiceSpec(
        "router", "local", "llamacpp", str(models), free_port(), args=("-c", "512", "-t", "2"),
        sleep_mode="router", extra={"router": {"models_max": 1, "default_model": "alpha"}}))
    try:
        lifecycle.start_service(store, "router", timeout=120)
        rt = lifecycle.runtime(store, lifecycle.get_service(store, "router"))
        cap = rt.sleep
        assert isinstance(cap, RouterSleep)
        assert cap.models(rt.endpoint) == {"alpha": "unloaded", "beta": "unloaded"}
        wake = lifecycle.wake(store, "router")  # load alpha, wait until loaded, canary
        assert wake.ok and wake.result == "awake", wake.summary()
        assert cap.models(rt.endpoint)["alpha"] == "loaded"
        report = lifecycle.sleep(store, "router")  # unload, wait until really unloaded
        assert report.ok and report.result == "asleep router", report.summary()
        assert set(cap.models(rt.endpoint).values()) == {"unloaded"}
        # wake by request: a chat request naming beta loads it on demand
        assert isinstance(canary(rt.endpoint, model="beta"), str)
        assert cap.models(rt.endpoint)["beta"] == "loaded"
        with pytest.raises(Exception, match="no model 'gamma'"):
            cap.wake(rt.endpoint, model="gamma")
    finally:
        stop_all(store)
