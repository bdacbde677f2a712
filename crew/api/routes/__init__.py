"""Route modules, one per resource; importing them fills `crew.api.spec.ENDPOINTS`."""

from __future__ import annotations


def load() -> None:
    from crew.api.routes import (  # noqa: F401
        artifacts,
        events,
        nodes,
        runs,
        system,
        tasks,
        workers,
    )
