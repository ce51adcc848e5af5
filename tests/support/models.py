"""Models for the planner: recorded config.json files, and model folders holding one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "planner"
CONFIGS = FIXTURES / "configs"


def config(name: str) -> dict:
    """A recorded Hugging Face config.json (tests/fixtures/planner/configs/NAME.json)."""
    return json.loads((CONFIGS / f"{name}.json").read_text())


def model_folder(tmp_path: Path, config: str = "Qwen__Qwen3-8B.json") -> Path:
    """A model folder with just a config.json (what the planner reads first)."""
    folder = tmp_path / "models" / config.removesuffix(".json")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIGS / config, folder / "config.json")
    return folder
