"""Engine drivers: vLLM, llama.cpp's llama-server, a generic command (and Docker)."""

from gpumod.engines.base import Engine, get_engine

__all__ = ["Engine", "get_engine"]
