from __future__ import annotations

from ..planner.conftest import FIXTURES, config, hub_answers, store  # noqa: F401  (fixtures)
