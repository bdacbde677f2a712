"""Input limits and text checks shared by every way input comes in (docs/limits.md).

Plans, `POST /tasks` bodies and command-line goals pass through the same checks, so
SQLite and PostgreSQL see the same strings: PostgreSQL refuses a NUL character and caps
some columns (a role is VARCHAR(128)) where SQLite would store anything. Checking here,
before anything is written, turns what would be a driver error halfway through a run into
a refusal naming the field.
"""

from __future__ import annotations

import re
import reprlib

MAX_TITLE = 500
"""A plan's or a goal's title (also the API's `title`)."""
MAX_NODE_TITLE = 1_000
"""A node's title: longer than a goal's, since a supervisor prefixes the goal's title."""
MAX_DESCRIPTION = 20_000
MAX_ITEM = 2_000
"""One acceptance criterion, risk, assumption or note."""
MAX_ITEMS = 200
"""Items in one list (acceptance, risks, assumptions, notes)."""
MAX_ROLE = 128
"""`suggested_agent_role`: the nodes table stores it in VARCHAR(128)."""
MAX_MODEL = 200
MAX_NODES = 10_000
MAX_JSON_DEPTH = 32
"""Nesting of arrays and objects; the plan format needs 5 levels inside a request body."""
MAX_INTEGER = 2**63 - 1
"""The largest integer both databases store (a 64-bit signed integer)."""
MAX_PLAN_BYTES = 16 * 1024 * 1024
"""A plan file or a plan read from stdin."""

QUOTE_CHARS = 80
"""How much of a value a refusal message quotes."""
MAX_MESSAGE_CHARS = 4_000
MAX_PROBLEM_CHARS = 1_000
MAX_PROBLEMS = 100

_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|[\ud800-\udfff]")
"""Control characters other than tab, line feed and carriage return (C0, DEL, C1), and
lone surrogates (half of a UTF-16 pair: no UTF-8 encoding exists, so no database and no
file can hold one)."""

_REPR = reprlib.Repr()
_REPR.maxstring = QUOTE_CHARS
_REPR.maxother = QUOTE_CHARS
_REPR.maxlevel = 2


def quote_cut(value: object, limit: int = QUOTE_CHARS) -> str:
    """`repr(value)` for a refusal message, cut to about `limit` characters.

    A message quotes what it refuses so the user can find it; quoting a 1 MB id whole
    would bury the message (and a terminal) under the input.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    return _REPR.repr(value)


def cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} more characters]"


def text_problem(value: str) -> str | None:
    """What makes `value` unfit to store, or None: a forbidden character, named."""
    found = _FORBIDDEN.search(value)
    if found is None:
        return None
    char = found.group()
    where = f"at position {found.start()}"
    if char == "\x00":
        return f"contains a NUL character (U+0000) {where}"
    if "\ud800" <= char <= "\udfff":
        return f"contains a lone surrogate (U+{ord(char):04X}) {where}, which is not valid Unicode"
    return (
        f"contains the control character U+{ord(char):04X} {where} "
        "(only tab, line feed and carriage return are accepted)"
    )


def check_text(value: str, label: str, limit: int, problems: list[str]) -> bool:
    """Append a problem naming `label` when `value` is too long or has a forbidden
    character; True when it is fine."""
    if len(value) > limit:
        problems.append(f"{label} is too long: {len(value):,} characters (at most {limit:,})")
        return False
    problem = text_problem(value)
    if problem is not None:
        problems.append(f"{label} {problem}")
        return False
    return True
