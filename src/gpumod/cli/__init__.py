"""The click CLI: one module per command group, loaded lazily; one error boundary."""
