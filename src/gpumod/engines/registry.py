"""Every engine driver by name: the one module that imports them all.

The drivers import `engines.base` (the Engine contract); nothing below this module
imports a concrete driver, so adding an engine touches its own file and this table.
"""

from __future__ import annotations

from gpumod.engines.base import Engine
from gpumod.engines.command import CommandEngine
from gpumod.engines.docker import DockerEngine
from gpumod.engines.llamacpp import LlamaCppEngine
from gpumod.engines.vllm import VLLMEngine
from gpumod.errors import UsageError

ENGINE_CLASSES: dict[str, type[Engine]] = {
    "vllm": VLLMEngine,
    "llamacpp": LlamaCppEngine,
    "command": CommandEngine,
    "docker": DockerEngine,
}


def get_engine(name: str) -> Engine:
    """The engine driver for a name ('vllm', 'llamacpp', 'command', 'docker')."""
    cls = ENGINE_CLASSES.get(name)
    if cls is None:
        raise UsageError(f"unknown engine {name!r}",
                         hint=f"use {', '.join(ENGINE_CLASSES)}")
    return cls()
