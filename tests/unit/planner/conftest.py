from __future__ import annotations

import json

import pytest

from tests.support.models import FIXTURES


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMOD_HOME", str(tmp_path / "home"))
    from gpumod.store.db import open_store

    s = open_store(tmp_path / "gpumod.db")
    yield s
    s.close()


@pytest.fixture
def hub_answers(monkeypatch):
    """Serve recorded Hugging Face API answers through huggingface_hub's real code path."""
    import httpx
    import huggingface_hub

    calls: list[str] = []
    hf = FIXTURES / "hf"

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls.append(path)
        if path == "/api/models/Qwen/Qwen3-8B":
            return httpx.Response(200, json=json.loads((hf / "Qwen__Qwen3-8B.model_info.json")
                                                       .read_text()))
        if path == "/Qwen/Qwen3-8B/resolve/main/config.json":
            return httpx.Response(200, json=json.loads((hf / "Qwen__Qwen3-8B.config.json")
                                                       .read_text()))
        if path == "/api/models":
            return httpx.Response(200, json=json.loads((hf / "search_qwen3-8b.json").read_text()))
        return httpx.Response(404, headers={"X-Error-Code": "RepoNotFound"},
                              json={"error": "Repository not found"})

    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(handler)))
    huggingface_hub.close_session()
    yield calls
    huggingface_hub.set_client_factory(lambda: httpx.Client())
    huggingface_hub.close_session()


@pytest.fixture
def hub_offline():
    """Hugging Face unreachable: every request through huggingface_hub's real code path fails
    to connect. Yields the URLs that were tried."""
    import httpx
    import huggingface_hub

    tried: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        tried.append(str(request.url))
        raise httpx.ConnectError("network is unreachable", request=request)

    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(refuse)))
    huggingface_hub.close_session()
    yield tried
    huggingface_hub.set_client_factory(lambda: httpx.Client())
    huggingface_hub.close_session()
