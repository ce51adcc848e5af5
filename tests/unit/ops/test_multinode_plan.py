"""Multi-node planning without a cluster: addresses, tp x pp, sizing, catalog, Ray argv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumod.catalog.models import (
    find_model,
    parse_catalog,
    require_selection,
    select_config,
    select_multinode,
)
from gpumod.errors import CapacityError, ConfigError, UsageError
from gpumod.hosts.model import GPU, Host
from gpumod.ops import netcheck, ray_nodes
from gpumod.ops.deploy import StartRequest
from gpumod.ops.multinode_start import plan_shape
from gpumod.planner import estimate as est
from gpumod.planner.facts import facts_from_config
from gpumod.planner.multinode import NodeGPUs, size

CONFIGS = Path(__file__).resolve().parents[2] / "fixtures" / "planner" / "configs"
H100, H100_NAME = 81559, "NVIDIA H100 80GB HBM3"


def facts(name: str, key: str):
    return facts_from_config(json.loads((CONFIGS / f"{name}.json").read_text()), key=key)


def pod(name: str, gpus: int = 8, gpu_name: str = H100_NAME) -> Host:
    return Host(name, "ssh", root="/r", gpus=tuple(GPU(i, f"G{i}", gpu_name, H100)
                                                    for i in range(gpus)))


def net(*addrs: tuple[str, str], boot: str = "", ssh: str = "") -> netcheck.PodNet:
    lines = [f"machine=m-{boot}", f"boot={boot}", f"ssh={ssh}"]
    lines += [f"addr={iface} {cidr}" for iface, cidr in addrs]
    return netcheck.parse_discovery("\n".join(lines))


# -- addresses ---------------------------------------------------------------------


def test_private_addresses_are_chosen_on_the_heads_subnet():
    nets = {"dc1": net(("lo", "127.0.0.1/8"), ("eth0", "203.0.113.7/24"),
                       ("ens5", "10.1.0.5/16"), boot="a"),
            "dc2": net(("docker0", "172.17.0.1/16"), ("eth1", "192.168.9.2/24"),
                       ("ens5", "10.1.3.9/16"), boot="b")}
    assert netcheck.choose_addresses(nets, "dc1") == {"dc1": "10.1.0.5", "dc2": "10.1.3.9"}


def test_tunnel_addresses_count_as_private():
    nets = {"a": net(("eth0", "198.51.100.4/24"), ("tailscale0", "100.101.2.3/32"), boot="1"),
            "b": net(("eth0", "198.51.100.9/24"), ("tailscale0", "100.77.0.8/32"), boot="2")}
    assert netcheck.choose_addresses(nets, "a") == {"a": "100.101.2.3", "b": "100.77.0.8"}


def test_pods_that_share_only_a_public_network_are_refused_with_a_hint():
    nets = {"dc1": net(("eth0", "203.0.113.7/24"), boot="a"),
            "dc2": net(("eth0", "198.51.100.9/24"), ("docker0", "172.17.0.1/16"), boot="b")}
    with pytest.raises(CapacityError) as info:
        netcheck.choose_addresses(nets, "dc1")
    assert "pod dc1 has no private network address (it has 203.0.113.7)" in info.value.message
    assert "unauthenticated and unencrypted" in info.value.message
    assert "WireGuard or Tailscale" in info.value.hint


def test_pods_on_one_machine_use_their_loopback_ssh_addresses_only():
    same = (("lo", "127.0.0.1/8"), ("eth0", "10.0.0.2/24"))
    nets = {"dc1": net(*same, boot="x", ssh="127.0.0.2"),
            "dc2": net(*same, boot="x", ssh="127.0.0.3")}
    assert netcheck.choose_addresses(nets, "dc1") == {"dc1": "127.0.0.2", "dc2": "127.0.0.3"}
    nets["dc2"] = net(*same, boot="x", ssh="127.0.0.2")
    with pytest.raises(CapacityError, match="are one machine"):
        netcheck.choose_addresses(nets, "dc1")


def test_containers_on_one_host_are_not_one_machine():
    nets = {"a": net(("eth0", "10.0.0.2/24"), boot="x", ssh="203.0.113.1"),
            "b": net(("eth0", "10.0.0.3/24"), boot="x", ssh="203.0.113.1")}
    assert netcheck.choose_addresses(nets, "a") == {"a": "10.0.0.2", "b": "10.0.0.3"}


# -- tp x pp -------------------------------------------------------------------------


def test_shape_defaults_to_gpus_per_pod_times_pods_on_ray():
    shape = plan_shape(StartRequest(model="some/model", name="m"), [pod("a", 4), pod("b", 4)])
    assert (shape.tp, shape.pp) == (4, 2)
    assert shape.args == ["--tensor-parallel-size", "4", "--pipeline-parallel-size", "2",
                          "--distributed-executor-backend", "ray"]


def test_shape_takes_the_catalogs_multinode_config():
    shape = plan_shape(StartRequest(model="deepseek-ai/DeepSeek-R1", name="r1"),
                       [pod("a"), pod("b")])
    assert shape.selection is not None and shape.selection.config.nodes == 2
    assert "--trust-remote-code" in shape.args and shape.args[-2:] == [
        "--distributed-executor-backend", "ray"]
    assert shape.args.count("--tensor-parallel-size") == 1


def test_shape_refuses_more_gpus_than_the_pods_have_and_other_backends():
    req = StartRequest(model="x/y", name="m", custom_args=["--tensor-parallel-size", "8",
                                                           "--pipeline-parallel-size", "2"])
    with pytest.raises(UsageError, match="16 GPUs, but the 2 pods have 8"):
        plan_shape(req, [pod("a", 4), pod("b", 4)])
    req = StartRequest(model="x/y", name="m", custom_args=["--distributed-executor-backend",
                                                           "mp"])
    with pytest.raises(UsageError, match="cannot span pods"):
        plan_shape(req, [pod("a", 4), pod("b", 4)])


# -- sizing ---------------------------------------------------------------------------


def nodes(n: int, gib_free: float = 79.0, total: int = H100) -> list[NodeGPUs]:
    return [NodeGPUs(f"p{i}", [total] * 8, [int(gib_free * 1024)] * 8) for i in range(n)]


def test_deepseek_fits_two_8x_h100_pods_and_the_share_is_computed():
    ds = facts("deepseek-ai__DeepSeek-V3", "deepseek-ai/DeepSeek-V3")
    result = size(ds, model="ds", tp=8, pp=2, nodes=nodes(2), engine_args=("--x",))
    assert result.args == ("--x", "--gpu-memory-utilization", "0.90")
    assert result.estimate and 35 < result.estimate["weights_gib"] < 45  # 671B FP8 / 16 GPUs
    assert "computed for tp=8 x pp=2" in result.notes[0]


def test_one_pod_is_refused_with_more_pods_as_the_first_alternative():
    ds = facts("deepseek-ai__DeepSeek-V3", "deepseek-ai/DeepSeek-V3")
    with pytest.raises(CapacityError) as info:
        size(ds, model="ds", tp=8, pp=1, nodes=nodes(1), engine_args=())
    assert "does not fit 1 pod(s) with tp=8 x pp=1" in info.value.message
    assert info.value.hint.startswith("[1] 2 pods of the same kind")


def test_busy_gpus_lower_the_share_or_refuse_with_a_shorter_context():
    llama = facts("meta-llama__Llama-3.1-405B-Instruct", "meta-llama/Llama-3.1-405B-Instruct")
    lowered = size(llama, model="405b", tp=8, pp=2, nodes=nodes(2, gib_free=70),
                   engine_args=())
    assert 0.8 < float(lowered.args[-1]) < 0.9
    with pytest.raises(CapacityError) as info:
        size(llama, model="405b", tp=8, pp=2, nodes=nodes(2, gib_free=56), engine_args=())
    assert info.value.hint.startswith("[1] 3 pods of the same kind")
    assert "[2] a shorter context: --context " in info.value.hint


def test_a_users_share_beyond_free_memory_is_refused():
    llama = facts("meta-llama__Llama-3.1-405B-Instruct", "meta-llama/Llama-3.1-405B-Instruct")
    with pytest.raises(CapacityError, match="does not fit with your memory settings"):
        size(llama, model="405b", tp=8, pp=2, nodes=nodes(2, gib_free=60),
             engine_args=("--gpu-memory-utilization", "0.95"))


def test_each_gpu_is_sized_for_the_tightest_pipeline_stage():
    """pp splits the layers as vLLM does; every GPU holds its stage's share of them."""
    llama = facts("meta-llama__Llama-3.1-405B-Instruct", "meta-llama/Llama-3.1-405B-Instruct")
    result = size(llama, model="405b", tp=8, pp=2, nodes=nodes(2), engine_args=())
    assert result.estimate is not None
    assert [s["layers"] for s in result.estimate["stages"]] == [63, 63]
    whole = est.vllm_estimate(llama, gpu_mib=H100, args=est.VLLMArgs(tp=8))
    assert 0.45 < result.estimate["weights_gib"] / whole.weights_gib < 0.55
    # a user's flags keep counting: an fp8 KV cache doubles the tokens in the same pool
    fp8 = size(llama, model="405b", tp=8, pp=2, nodes=nodes(2),
               engine_args=("--kv-cache-dtype", "fp8"))
    assert fp8.estimate["kv_tokens"] > 1.9 * result.estimate["kv_tokens"]


# -- catalog --------------------------------------------------------------------------


def test_multinode_configs_are_never_picked_for_one_pod():
    r1 = find_model("deepseek-ai/DeepSeek-R1")
    assert r1 is not None
    assert select_config(r1, pod("a").gpus) is None
    assert select_multinode(r1, 2, pod("a").gpus).config.label() == "2 pods x 8x H100/H200"
    with pytest.raises(UsageError) as info:
        require_selection(r1, pod("a").gpus, None)
    assert "--pods POD1,POD2" in info.value.hint
    assert select_multinode(find_model("meta-llama/Llama-3.1-405B-Instruct"), 2,
                            pod("a").gpus) is not None


def test_catalog_rejects_a_bad_node_count():
    with pytest.raises(ConfigError, match="'nodes'"):
        parse_catalog({"models": [{"id": "a/b", "engine": "vllm",
                                   "configs": [{"gpus": 8, "nodes": 0}]}]})


# -- Ray nodes --------------------------------------------------------------------------


def test_ray_argv_is_what_vllm_documents_with_loopback_dashboard():
    head = ray_nodes.RayNode("r1", "dc1", "head", "10.0.0.5", 8, "10.0.0.5", 6379, 52365, 8265,
                             "/v/bin/ray")
    assert head.argv("/tmp/gpumod-ray-x") == [
        "/v/bin/ray", "start", "--block", "--head", "--port=6379", "--node-ip-address=10.0.0.5",
        "--num-gpus=8", "--temp-dir=/tmp/gpumod-ray-x", "--dashboard-agent-listen-port=52365",
        "--disable-usage-stats", "--dashboard-host=127.0.0.1", "--dashboard-port=8265"]
    worker = ray_nodes.RayNode("r1", "dc2", "worker", "10.0.0.6", 8, "10.0.0.5", 6379, 52365)
    assert worker.argv("/t")[:4] == ["ray", "start", "--block", "--address=10.0.0.5:6379"]
    env = worker.env({"PATH": "/v/bin"})
    assert env["VLLM_HOST_IP"] == env["RAY_OVERRIDE_NODE_IP_ADDRESS"] == "10.0.0.6"
    assert env["GPUMOD_RAY_NODE"] == "r1@dc2" and env["RAY_USAGE_STATS_ENABLED"] == "0"


def test_ray_ports_avoid_busy_and_reserved_ranges_and_temp_dirs_stay_short():
    assert ray_nodes.pick_port(6379, {6379, 6380}) == 6381
    assert ray_nodes.pick_port(8265, set(range(8265, 8300))) == 9000
    host = Host("dc1", "ssh", root="/home/someone/with/a/very/long/path/.gpumod")
    assert len(ray_nodes.temp_dir(host, "a-long-deployment-name-for-ray")) < 40


def test_ray_status_is_read_for_nodes_and_gpus():
    text = ("======== Autoscaler status ========\nNode status\n-----\nActive:\n"
            " 1 node_09998d\n 1 node_1f88d7\nPending:\n (no pending nodes)\n"
            "Recent failures:\n (no failures)\n\nResources\n-----\nTotal Usage:\n"
            " 0.0/2.0 CPU\n 0.0/4.0 GPU\n 0B/31.76GiB memory\n")
    view = ray_nodes.parse_status(text)
    assert (view.nodes, view.gpus) == (2, 4.0)


# -- admission across pods ----------------------------------------------------------------


def _multinode_record():
    from gpumod.ops import hosts as hostops
    from gpumod.ops import services as records
    from gpumod.spec import ServiceSpec
    from gpumod.store.db import open_store

    store = open_store()
    for name in ("dc1", "dc2", "dc3"):
        hostops.save_host(store, pod(name, 2), replace=False)
    nodes = {p: {"ip": f"10.0.0.{i}", "role": "head" if i == 1 else "worker", "gpus": 2,
                 "agent_port": 52365} for i, p in enumerate(("dc1", "dc2"), start=1)}
    spec = ServiceSpec(name="r1", host="dc1", engine="vllm", model="x/y", port=0,
                       gpus=(0, 1), extra={"multinode": {"pods": ["dc1", "dc2"], "tp": 2,
                                                         "pp": 2, "gpus_per_node": 2,
                                                         "nodes": nodes}})
    records.reserve(store, spec, hostops.get_host(store, "dc1"), listening=set())
    return store


def test_a_multinode_deployment_is_never_restarted_as_one_service():
    from gpumod.ops import lifecycle

    store = _multinode_record()
    for call in (lambda: lifecycle.restart_service(store, "r1"),
                 lambda: lifecycle.ensure_ready(store, "r1")):
        with pytest.raises(UsageError, match=r"spans pods \(dc1, dc2\)") as info:
            call()
        assert "`pi stop r1`, then start it again with --pods" in info.value.hint
    assert store.query_one("SELECT state FROM services WHERE name = 'r1'")["state"] == \
        "starting"   # nothing was stopped or moved


def test_a_starting_multinode_deployment_counts_on_every_pod_it_spans():
    """A one-pod start on a worker pod sees what a multi-node start was admitted there."""
    from gpumod.hosts.gpus import parse_snapshot
    from gpumod.hosts.transports.mock import MockTransport
    from gpumod.ops import admission, locks

    store = _multinode_record()
    with store.transaction() as db:
        db.execute("UPDATE services SET reserved_mib = 70000 WHERE name = 'r1'")
    snap = parse_snapshot("0, GPU-0, NVIDIA H100 80GB HBM3, 81559, 0, 81559, 550\n"
                          "1, GPU-1, NVIDIA H100 80GB HBM3, 81559, 0, 81559, 550\n")

    def no_command(argv, stdin):  # no pid is recorded yet: nothing to ask the pod
        raise AssertionError(f"unexpected command {argv}")

    transport = MockTransport(no_command)

    def seen(host: str) -> dict[int, int]:
        return admission.pending_on(store, host, transport, snap, exclude="other").mib

    assert seen("dc2") == {}   # nobody holds r1's start: a reservation of a dead start
    with locks.service_lock("r1", what="test"):
        assert seen("dc2") == {0: 70000, 1: 70000} == seen("dc1")
        assert seen("dc3") == {}
        assert admission.pending_on(store, "dc2", transport, snap, exclude="r1").mib == {}
