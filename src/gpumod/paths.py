"""Where gpumod keeps its files on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The config folder: GPUMOD_HOME, else PI_CONFIG_DIR, else ~/.gpumod."""
    for var in ("GPUMOD_HOME", "PI_CONFIG_DIR"):
        value = os.environ.get(var)
        if value:
            return Path(value).expanduser()
    return Path.home() / ".gpumod"


def ensure_home() -> Path:
    path = home()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def database_path() -> Path:
    return home() / "gpumod.db"


def user_preset_files() -> list[Path]:
    """Your presets: $GPUMOD_HOME/presets/{services,modes}/*.yaml, in order."""
    root = home() / "presets"
    return [path for sub in ("services", "modes") if (root / sub).is_dir()
            for path in sorted((root / sub).glob("*.y*ml"))]


def control_dir() -> Path:
    """Short folder for SSH ControlMaster sockets (unix socket paths max ~104 bytes)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    path = Path(base) / f"gpumod-ssh-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
