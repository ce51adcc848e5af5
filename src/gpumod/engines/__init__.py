"""Engine drivers: vLLM, llama.cpp's llama-server, a generic command, Docker.

`engines.base` is the Engine contract, `engines.registry.get_engine` the driver for a name.
"""
