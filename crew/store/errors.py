"""Turn driver failures into crew's errors, with one readable line and no driver dump."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc

from crew.domain.errors import DatabaseUnavailableError

_CLASS_PREFIX = re.compile(r"^<class '[\w.]+'>:\s*")


def reason(error: BaseException) -> str:
    """The driver's own message, first line only, without SQLAlchemy's decorations."""
    inner = error.orig if isinstance(error, exc.DBAPIError) and error.orig is not None else error
    text = _CLASS_PREFIX.sub("", str(inner)).strip()
    first = text.splitlines()[0] if text else ""
    return first or type(inner).__name__


@contextmanager
def unavailable_on_failure(where: str, *, connecting: bool = False) -> Iterator[None]:
    """Re-raise connection-level failures as DatabaseUnavailableError (exit 4 / HTTP 503).

    Integrity and programming errors pass through: they are bugs or conflicts, not an
    unreachable database, and the caller decides what they mean. While `connecting`,
    every driver error counts: a wrong database name or password surfaces as a generic
    driver error, and the first contact is where such configuration mistakes show up.
    """
    try:
        yield
    except exc.DBAPIError as error:
        if not connecting and not isinstance(error, exc.OperationalError | exc.InterfaceError):
            raise
        message = f"database unavailable ({where}): {reason(error)}"
        raise DatabaseUnavailableError(message) from error
    except (OSError, TimeoutError) as error:
        raise DatabaseUnavailableError(
            f"cannot connect to the database ({where}): {reason(error)}"
        ) from error
