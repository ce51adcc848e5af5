"""``--distributed-executor-backend ray``: what vLLM's Ray executor does with a cluster.

Like ``vllm/v1/executor/ray_utils.py`` (``initialize_ray_cluster``): connect with
``ray.init(address=None)`` (so ``RAY_ADDRESS`` or the node's running cluster), check the
current node has a GPU, ask for ONE placement group of ``tp x pp`` bundles of
``{"GPU": 1}`` (the first pinned to this node with ``node:<ip>``, strategy PACK), wait
for it with vLLM's messages and its timeout, then start one worker actor per bundle.
Each actor is a real Ray actor on whatever node Ray placed it: it sees the GPU Ray gave
it (``CUDA_VISIBLE_DEVICES``), checks free memory there with vLLM's startup message,
and registers its memory in THAT node's fake nvidia-smi state, so each pod shows its
share. Ray is imported lazily: the fake without Ray needs none of it.

Knob: ``FAKE_VLLM_PG_TIMEOUT`` (vLLM's ``PG_WAIT_TIMEOUT``, 1800 s) so tests need not wait
half an hour for a placement group that cannot be made.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from gpumod.testing import fake_nvidia_smi as smi
from gpumod.testing.fake_vllm.common import PROCESS_NAME, StartupError, env_float, log

PG_WAIT_TIMEOUT = 1800


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise StartupError(f"ValueError: Failed to import Ray: {exc}.Please install Ray with "
                           "`pip install ray`.") from None
    return ray


def host_ip() -> str:
    """vLLM's get_ip(): VLLM_HOST_IP when set, else Ray's idea of this node's address."""
    ip = os.environ.get("VLLM_HOST_IP", "").strip()
    if ip:
        return ip
    import ray

    return str(ray.util.get_node_ip_address())


class FakeWorker:
    """One GPU worker (vLLM's RayWorkerWrapper): lives on the node Ray chose."""

    def __init__(self) -> None:
        self.state_path = os.environ.get(smi.STATE_ENV, "")
        self.uuid = ""

    def init_device(self, util: float, rank: int) -> dict[str, Any]:
        """The device this worker got, after vLLM's free-memory check (raises like vLLM)."""
        import ray

        ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        if not self.state_path or not os.path.exists(self.state_path) or not ids:
            raise RuntimeError("Failed to infer device type on node "
                               f"{ray.util.get_node_ip_address()}")
        state = smi.read_state(self.state_path)
        gpus = {str(g["index"]): g for g in state["gpus"]}
        gpu = gpus.get(str(ids[0]))
        if gpu is None:
            raise RuntimeError(f"CUDA error: invalid device ordinal {ids[0]}")
        info = next(g for g in smi.gpu_memory(state) if g["uuid"] == gpu["uuid"])
        total_gib = int(info["memory_total_mib"]) / 1024
        free_gib = int(info["free_mib"]) / 1024
        if free_gib < util * total_gib:
            raise ValueError(
                f"Free memory on device cuda:0 ({free_gib:.2f}/{total_gib:.2f} GiB) on startup "
                f"is less than desired GPU memory utilization ({util}, "
                f"{util * total_gib:.2f} GiB). Decrease GPU memory utilization or reduce GPU "
                "memory used by other processes.")
        self.uuid = gpu["uuid"]
        smi.register_process(self.state_path, os.getpid(), PROCESS_NAME, [self.uuid], 0)
        return {"rank": rank, "ip": ray.util.get_node_ip_address(), "gpu": str(ids[0]),
                "uuid": self.uuid, "total_mib": int(info["memory_total_mib"]),
                "pid": os.getpid()}

    def set_memory(self, mib: int) -> None:
        if self.state_path and self.uuid:
            smi.update_process(self.state_path, os.getpid(), mib, [self.uuid])

    def ping(self) -> int:
        return os.getpid()


@dataclass
class RayWorkers:
    """The placement group and its worker actors, as the engine holds them."""

    actors: list[Any]
    devices: list[dict[str, Any]]
    placement_group: Any
    dead: str = ""                       # why the engine is dead ("" while all are alive)
    _ray: Any = field(default=None, repr=False)

    @property
    def total_mib(self) -> int:
        return min(int(d["total_mib"]) for d in self.devices)

    def set_memory(self, mib: int) -> None:
        self._ray.get([a.set_memory.remote(mib) for a in self.actors], timeout=60)

    def check(self, timeout: float = 10) -> str:
        """'' while every worker answers; else vLLM's fatal error (kept: a dead engine stays
        dead). A slow answer is not a death: only an actor Ray reports dead is."""
        if self.dead:
            return self.dead
        ray = self._ray
        try:
            ray.get([a.ping.remote() for a in self.actors], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            return ""
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.dead = f"{type(exc).__name__}: {first}"
            log("EngineCore encountered a fatal error.", "core.py:854", proc="EngineCore_DP0",
                level="ERROR")
            log(f"ray.exceptions.{self.dead}", "core.py:856", proc="EngineCore_DP0",
                level="ERROR")
        return self.dead


def _wait_until_pg_ready(ray: Any, pg: Any, specs: list[dict[str, float]]) -> None:
    timeout = env_float("FAKE_VLLM_PG_TIMEOUT", PG_WAIT_TIMEOUT)
    started = time.time()
    ready_ref = pg.ready()
    interval = 10.0
    while time.time() - started < timeout:
        ready, _ = ray.wait([ready_ref], timeout=min(interval, max(timeout - (time.time()
                                                                             - started), 0.1)))
        if ready:
            return
        interval *= 2
        log(f"Waiting for creating a placement group of specs for "
            f"{int(time.time() - started)} seconds. specs={specs}. Check `ray status` and "
            "`ray list nodes` to see if you have enough resources, and make sure the IP "
            "addresses used by ray cluster are the same as VLLM_HOST_IP environment variable "
            "specified in each node if you are running on a multi-node.", "ray_utils.py:245",
            proc="EngineCore_DP0")
    total = sum(s.get("GPU", 0) for s in specs)
    shown = int(timeout) if timeout == int(timeout) else timeout
    if total > 1:
        raise StartupError(
            f"ValueError: Cannot provide a placement group requiring {total} GPUs "
            f"(placement_group_specs={specs}) within {shown} seconds.\n"
            "Tensor parallel size may exceed available GPUs in your cluster. Check resources "
            "with `ray status` and `ray list nodes`.\n"
            "If running on K8s with limited GPUs, consider reducing --tensor-parallel-size to "
            "match available GPU resources.")
    raise StartupError(f"ValueError: Cannot provide a placement group of "
                       f"placement_group_specs={specs} within {shown} seconds. See "
                       "`ray status` and `ray list nodes` to make sure the cluster has enough "
                       "resources.")


def start_workers(world: int, util: float) -> RayWorkers:
    """initialize_ray_cluster + one worker per bundle; StartupError with vLLM's messages."""
    ray = _ray()
    from ray._private.state import available_resources_per_node
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, logging_level="ERROR",
                 log_to_driver=False)
    total = ray.cluster_resources().get("GPU", 0)
    log(f"Connected to the Ray cluster: {int(total)} GPU(s) on {len(ray.nodes())} node(s)",
        "ray_utils.py:320", proc="EngineCore_DP0")
    if world > total:
        log("The number of required GPUs exceeds the total number of available GPUs in the "
            "placement group.", "ray_utils.py:370", proc="EngineCore_DP0", level="WARNING")
    ip = host_ip()
    node_id = ray.get_runtime_context().get_node_id()
    here = available_resources_per_node().get(node_id, {})
    if here.get("GPU", 0) < 1:
        raise StartupError(f"ValueError: Current node has no GPU available. "
                           f"current_node_resource={here!r}. vLLM engine cannot start without "
                           f"GPU. Make sure you have at least 1 GPU available in a node "
                           f"current_node_id={node_id!r} current_ip={ip!r}.")
    specs: list[dict[str, float]] = [{"GPU": 1.0} for _ in range(world)]
    specs[0][f"node:{ip}"] = 0.001
    pg = placement_group(specs, strategy="PACK")
    try:
        _wait_until_pg_ready(ray, pg, specs)
        remote = ray.remote(num_cpus=0, num_gpus=1)(FakeWorker)
        actors = [remote.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=i)).remote() for i in range(world)]
        try:
            devices = ray.get([a.init_device.remote(util, i) for i, a in enumerate(actors)],
                              timeout=300)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            raise StartupError(f"{type(cause).__name__}: {cause}") from None
    except BaseException:
        remove_placement_group(pg)
        raise
    per_node: dict[str, int] = {}
    for device in devices:
        per_node[device["ip"]] = per_node.get(device["ip"], 0) + 1
    for node, count in sorted(per_node.items()):
        log(f"Ray workers on {node}: {count} GPU(s)", "ray_executor.py:180",
            proc="EngineCore_DP0")
    return RayWorkers(actors, devices, pg, _ray=ray)
