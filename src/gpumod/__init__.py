"""gpumod: run LLM inference servers on GPU boxes and rented pods, and make them fit."""

__version__ = "0.1.0"
