"""The run's goal: what the supervisor plans for and what every executor is reminded of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crew.domain.plan import Plan


@dataclass(frozen=True, slots=True)
class Goal:
    title: str
    description: str | None = None
    acceptance: tuple[str, ...] = ()

    @classmethod
    def from_plan(cls, plan: Plan) -> Goal:
        """The goal of a run started from a plan file."""
        return cls(title=plan.title, description=plan.description, acceptance=plan.acceptance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "description": self.description,
            "acceptance": list(self.acceptance),
        }
