from __future__ import annotations

from ..planner.conftest import hub_answers, store  # noqa: F401  (fixtures)
