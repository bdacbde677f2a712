"""The one clock: timezone-aware UTC, as every stored and returned timestamp is (DESIGN §4)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
