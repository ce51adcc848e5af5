"""Process trees on a host and the GPU memory they hold: the one place that computes it.

An engine's GPU memory is held by its process *tree* (vLLM's EngineCore, tensor
parallel workers), so the memory of a service is the sum of nvidia-smi's
compute-apps rows whose pid is in the tree of the service's pid. One ``ps`` answers
for every tree of a host (:func:`owners`), one nvidia-smi snapshot for every GPU.

Users: the sleep check (did the memory drop), calibration after a start (what the
engine really holds), mode-switch fit checks (what leaving services free), admission
(what a starting service already holds of its reservation), and the planner's live
simulation, which is handed these figures rather than computing them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpumod.errors import GpumodError
from gpumod.hosts.transports.base import Transport

PS_ARGV = ["ps", "-e", "-o", "pid=", "-o", "ppid="]


def children(transport: Transport) -> dict[int, list[int]]:
    """parent pid -> child pids, from one `ps` on the host (raises when it fails)."""
    result = transport.run(PS_ARGV, timeout=30)
    result.check(f"{transport.label}: ps")
    found: dict[int, list[int]] = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            found.setdefault(int(parts[1]), []).append(int(parts[0]))
    return found


def tree(kids: Mapping[int, list[int]], root: int) -> set[int]:
    """root and all its descendants."""
    found, stack = {root}, [root]
    while stack:
        for child in kids.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def process_tree(transport: Transport, pid: int) -> set[int]:
    return tree(children(transport), pid)


def owners(transport: Transport, roots: Mapping[str, int]) -> tuple[dict[int, str], str]:
    """pid -> owner name for every process in each root's tree (one `ps` for all).

    When `ps` fails, only the roots themselves are matched; the second value says so.
    """
    owner = {pid: name for name, pid in roots.items()}
    if not roots:
        return owner, ""
    try:
        kids = children(transport)
    except GpumodError as exc:
        return owner, f"process trees unknown ({exc.message}); matched by pid only"
    for name, root in roots.items():
        for pid in tree(kids, root):
            owner.setdefault(pid, name)
    return owner, ""


@dataclass(frozen=True)
class TreeMemory:
    """GPU memory one process tree holds, per GPU index (MiB)."""

    per_gpu: dict[int, int] = field(default_factory=dict)
    complete: bool = True      # False when nvidia-smi hid the figure of one of its processes

    @property
    def total(self) -> int | None:
        return sum(self.per_gpu.values()) if self.complete else None

    @property
    def busiest(self) -> int | None:
        """The most it holds on one GPU (the per-GPU figure the planner calibrates)."""
        if not self.complete:
            return None
        return max(self.per_gpu.values()) if self.per_gpu else None


def memory_of(snapshot: Any, pids: Iterable[int]) -> TreeMemory:
    """What the processes `pids` hold on each GPU of a nvidia-smi snapshot."""
    wanted = set(pids)
    index_of = {u.gpu.uuid: u.gpu.index for u in snapshot.gpus}
    per_gpu: dict[int, int] = {}
    complete = True
    for proc in snapshot.processes:
        if proc.pid not in wanted:
            continue
        if proc.used_mib is None:
            complete = False
            continue
        index = index_of.get(proc.gpu_uuid)
        if index is not None:
            per_gpu[index] = per_gpu.get(index, 0) + proc.used_mib
    return TreeMemory(per_gpu, complete)


def tree_memory(transport: Transport, pid: int | None, *, snapshot: Any = None
                ) -> TreeMemory | None:
    """What pid's process tree holds now; None without a pid or without nvidia-smi."""
    if not pid:
        return None
    if snapshot is None:
        from gpumod.hosts.gpus import snapshot as take

        snapshot = take(transport)
        if snapshot is None:
            return None
    return memory_of(snapshot, process_tree(transport, pid))


def tree_gpu_mib(transport: Transport, pid: int | None) -> int | None:
    """GPU memory (MiB, all GPUs) held by pid and its descendants; None if not measurable."""
    held = tree_memory(transport, pid)
    return None if held is None else held.total


def trees_memory(transport: Transport, snapshot: Any, roots: Mapping[str, int]
                 ) -> tuple[dict[str, TreeMemory], str]:
    """What each named root's tree holds, from one `ps` and the given snapshot."""
    owner, note = owners(transport, roots)
    pids: dict[str, set[int]] = {name: set() for name in roots}
    for pid, name in owner.items():
        pids[name].add(pid)
    return {name: memory_of(snapshot, found) for name, found in pids.items()}, note
