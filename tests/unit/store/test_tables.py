"""The store's typed queries: what is written is what is read back, per table group."""

from __future__ import annotations

from pathlib import Path

from gpumod.hosts.model import GPU, Host
from gpumod.spec import ServiceSpec
from gpumod.store import hosts, modes, services, settings
from gpumod.store.db import Store


def pod(name: str = "dc1", gpus: int = 2) -> Host:
    return Host(name=name, kind="ssh", ssh_command="ssh -p 2222 root@10.0.0.5",
                ssh_argv=("-p", "2222", "root@10.0.0.5"), address="10.0.0.5",
                port_map={"8001": "proxy:9001"}, root="/root/.gpumod",
                engine_env={"vllm_version": "0.19.1"}, capabilities={"systemd": "user"},
                gpus=tuple(GPU(i, f"GPU-{i}", "NVIDIA H100 80GB HBM3", 81559)
                           for i in range(gpus)))


def test_hosts_round_trip_with_their_gpus(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    hosts.write(store, pod())
    assert hosts.get(store, "dc1") == pod()
    assert [h.name for h in hosts.list_all(store)] == ["local", "dc1"]
    hosts.write(store, pod(gpus=1))                      # an update replaces the GPUs
    assert hosts.gpus(store, "dc1") == list(pod(gpus=1).gpus)
    hosts.set_port_map(store, "dc1", {}, None)
    assert hosts.get(store, "dc1").port_map == {} and hosts.get(store, "dc1").address
    assert hosts.get(store, "nope") is None and not hosts.exists(store, "nope")


def test_services_round_trip_and_go_with_their_host(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    hosts.write(store, pod())
    spec = ServiceSpec("chat", "dc1", "vllm", "Qwen/Qwen3-8B", 8001, gpus=(0, 1),
                       args=("--max-model-len", "8192"), env={"A": "1"}, sleep_mode="l1",
                       depends_on=("emb",), vram_mib=30000, extra={"bind": "0.0.0.0"},
                       state="running", pid=4242, reserved_mib=100, note="why")
    services.insert(store, spec)
    assert services.get(store, "chat") == spec
    services.set_state(store, "chat", "stopping", note="pod unreachable", pid=None)
    got = services.get(store, "chat")
    assert (got.state, got.note, got.pid, got.reserved_mib) == \
        ("stopping", "pod unreachable", None, 100)
    services.replace(store, spec.with_(port=8005))
    assert services.get(store, "chat").port == 8005
    assert services.count_on_host(store, "dc1") == 1
    hosts.delete(store, "dc1")
    assert services.get(store, "chat") is None, "ON DELETE CASCADE"


def test_modes_round_trip_and_the_current_mode(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    for i, name in enumerate(("emb", "chat")):
        services.insert(store, ServiceSpec(name, "local", "vllm", "a/b", 8001 + i))
    modes.insert(store, "rag", host="local", description="d", services=["emb", "chat"],
                 sleep_on_idle=["chat"])
    mode = modes.get(store, "rag")
    assert mode == modes.Mode("rag", "local", "d", ("emb", "chat"), ("chat",))
    assert modes.services_in_modes(store, "local") == {"emb", "chat"}
    modes.set_current(store, "local", "rag")
    assert modes.current(store, "local") == "rag"
    modes.delete(store, mode)
    assert modes.get(store, "rag") is None and modes.current(store, "local") is None


def test_settings_and_events(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    assert settings.get(store, "active_host") == "local"
    settings.put(store, "active_host", "dc1")
    assert store.get_setting("active_host") == "dc1"
    settings.log_event(store, "start", service="chat", detail="x")
    assert store.query_one("SELECT action FROM events")["action"] == "start"
