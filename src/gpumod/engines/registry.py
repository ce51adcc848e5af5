"""Every engine driver by name: the one module that imports them all.

The drivers import `engines.base` (the Engine contract); nothing below this module
imports a concrete driver, so adding an engine touches its own file and this table.
A driver is imported when it is asked for: `pi list` of llama.cpp services never
loads the vLLM or Docker drivers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpumod.errors import UsageError
from gpumod.spec import ENGINES

if TYPE_CHECKING:
    from gpumod.engines.base import Engine


def get_engine(name: str) -> Engine:
    """The engine driver for a name ('vllm', 'llamacpp', 'command', 'docker')."""
    if name == "vllm":
        from gpumod.engines.vllm import VLLMEngine

        return VLLMEngine()
    if name == "llamacpp":
        from gpumod.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine()
    if name == "command":
        from gpumod.engines.command import CommandEngine

        return CommandEngine()
    if name == "docker":
        from gpumod.engines.docker import DockerEngine

        return DockerEngine()
    raise UsageError(f"unknown engine {name!r}", hint=f"use {', '.join(ENGINES)}")
