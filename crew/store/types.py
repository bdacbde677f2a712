"""Column types shared by the tables.

SQLite has no time zone type: a plain DateTime would hand back naive values there and
aware ones on PostgreSQL, and naive datetimes compared with aware ones raise (or, worse,
silently mean local time). UTCDateTime makes both backends behave the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """timestamptz on PostgreSQL, UTC text on SQLite; always returned aware UTC.

    Naive input is refused: guessing its zone is how local-time bugs get in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: pass an aware UTC value")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # The SQLite dialect formats the wall clock and drops tzinfo: store UTC's.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_type() -> TypeEngine[Any]:
    """Plain JSON on both backends.

    JSONB would reorder object keys; plans and options are shown back to users, so the
    order they were written in is kept.
    """
    return JSON()


def event_id_type() -> TypeEngine[int]:
    """BIGINT on PostgreSQL; INTEGER on SQLite so the column aliases the rowid.

    Only an `INTEGER PRIMARY KEY` column is SQLite's rowid; a BIGINT one would not
    autoincrement at all.
    """
    return BigInteger().with_variant(Integer(), "sqlite")
