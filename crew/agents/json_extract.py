"""Find the JSON object in a model's answer.

Models wrap JSON in code fences or explain it in prose even when told not to; rejecting
those answers would waste a call. Accepted, in this order: the whole answer as JSON, the
content of a ``` / ```json fence, then the first balanced top-level `{...}` in the text
(braces inside strings do not count) that decodes as an object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)


class JSONExtractError(ValueError):
    """No JSON object could be found; the message says why, for the repair prompt."""


def extract_json_object(text: str) -> dict[str, Any]:
    stripped = text.strip()
    if not stripped:
        raise JSONExtractError("the answer is empty: expected a JSON object")
    first_error: str | None = None
    for candidate in _candidates(stripped):
        try:
            value = json.loads(candidate)
        except ValueError as error:
            first_error = first_error or f"{error}"
            continue
        if isinstance(value, dict):
            return value
        first_error = first_error or f"expected a JSON object, got a JSON {_kind(value)}"
    for candidate in _balanced_objects(stripped):
        try:
            value = json.loads(candidate)
        except ValueError as error:
            first_error = first_error or f"{error}"
            continue
        if isinstance(value, dict):
            return value
    detail = f" ({first_error})" if first_error else ""
    raise JSONExtractError(f"the answer contains no valid JSON object{detail}")


def _candidates(text: str) -> Iterator[str]:
    yield text
    for match in _FENCE.finditer(text):
        body = match.group(1).strip()
        if body:
            yield body


def _balanced_objects(text: str) -> Iterator[str]:
    """Every top-level `{...}` span, left to right, skipping braces inside strings."""
    depth = 0
    start = -1
    in_string = False
    escaped = False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"' and depth > 0:
            in_string = True
        elif char == "{":
            if depth == 0:
                start = index
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                yield text[start : index + 1]


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else "value"
