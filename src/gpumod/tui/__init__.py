"""`gpumod tui`: the live terminal dashboard (Textual, the `tui` extra)."""
