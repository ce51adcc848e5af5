"""Supervisors keep service processes alive: `process` (setsid + pid file) and `systemd`."""
