from __future__ import annotations

from ..planner.conftest import hub_answers, hub_offline, store  # noqa: F401  (fixtures)
