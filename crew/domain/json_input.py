"""Decoding JSON that comes from outside (plan files, stdin, request bodies), strictly.

The standard decoder accepts things that break crew later: `NaN` and `Infinity` (not
JSON; they come back out as invalid JSON and PostgreSQL refuses them), numbers that
overflow to infinity or do not fit a 64-bit column, nesting deep enough to exhaust the
stack, lone surrogate escapes (no UTF-8 encoding exists for them) and NUL characters
(PostgreSQL cannot store them). Duplicate object keys are refused too: decoders disagree
on which copy wins, so the plan a user reviewed might not be the one that runs.
Every refusal is an InvalidInputError whose problems name where the value is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from crew.domain.errors import InvalidInputError
from crew.domain.limits import (
    MAX_INTEGER,
    MAX_JSON_DEPTH,
    QUOTE_CHARS,
    quote_cut,
    text_problem,
)

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""NUL and lone surrogates: no database (or no UTF-8 text at all) can hold them."""
MAX_REPORTED = 20
"""Problems listed for one document; the rest are counted."""


class _Refused(ValueError):
    """Raised from inside the decoder's hooks to stop at the first bad number or key."""


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number (non-finite numbers are refused)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {quote_cut(text)} is too large (it overflows to infinity)")
    return value


def _int(text: str) -> int:
    # Bounded by length before converting: int() of a huge digit string is slow, and
    # beyond 4,300 digits Python refuses it with an unrelated message.
    digits = text.lstrip("-")
    if len(digits) > 19 or abs(value := int(text)) > MAX_INTEGER:
        raise _Refused(
            f"the integer {quote_cut(text)} is out of range "
            f"(from -{MAX_INTEGER} to {MAX_INTEGER}: what a 64-bit column holds)"
        )
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"duplicate key {quote_cut(key)} in one object (keys must be unique)")
        result[key] = value
    return result


def decode_json(raw: str | bytes, source: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The decoded value of `raw`; InvalidInputError saying what is wrong and where.

    `source` names the input in messages ("plan.json", "stdin", "the body").
    """
    try:
        text = raw.decode(json.detect_encoding(raw)) if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as error:
        raise InvalidInputError(
            f"{source} is not valid JSON: invalid UTF-8 at byte {error.start}"
        ) from None
    try:
        value = json.loads(
            text,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
            object_pairs_hook=_object,
        )
    except json.JSONDecodeError as error:
        raise InvalidInputError(
            f"{source} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    except _Refused as error:
        raise InvalidInputError(f"{source} is refused: {error}") from None
    except RecursionError:
        raise InvalidInputError(
            f"{source} is refused: arrays and objects nested more than {max_depth} levels deep"
        ) from None
    problems = list(_problems(value, max_depth))
    if problems:
        if len(problems) > MAX_REPORTED:
            more = len(problems) - MAX_REPORTED
            problems = [*problems[:MAX_REPORTED], f"… and {more} more"]
        raise InvalidInputError(f"{source} is refused", problems=problems)
    return value


def _problems(value: Any, max_depth: int) -> Iterator[str]:
    """Strings that cannot be stored, and nesting beyond `max_depth`, each with its path.

    Iterative, so a document the decoder accepted cannot exhaust the stack here.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                yield f"{path or 'the value'}: {text_problem(item)}"
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > max_depth:
            yield f"{path or 'the value'}: nested more than {max_depth} levels deep"
            continue
        if isinstance(item, list):
            children = [(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item)]
        else:
            children = []
            for key, child in item.items():
                where = _join(path, key)
                if _UNSTORABLE.search(key):
                    yield f"{where}: the key {text_problem(key)}"
                else:
                    children.append((child, where, depth + 1))
        stack.extend(reversed(children))


def _join(path: str, key: str) -> str:
    """`path.key`, with a long key cut so a path stays readable."""
    name = key if len(key) <= QUOTE_CHARS and key.isidentifier() else quote_cut(key)
    return f"{path}.{name}" if path else name
