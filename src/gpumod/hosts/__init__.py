"""Hosts (local and SSH pods), their GPUs and the transports that reach them."""
