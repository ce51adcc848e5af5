"""Exports of what gpumod describes into other systems' formats (Kubernetes manifests).

Renderers here take plain data (``gpumod.export.kubernetes.Workload``) and return
objects; gathering that data from the store, the presets and the engine drivers is
``gpumod.ops.export``'s job.
"""
