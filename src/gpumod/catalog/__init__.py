"""Known models and presets shipped as data, and their loader."""
