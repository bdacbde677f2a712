"""Asking a server for JSON that follows a schema, in the spelling it accepts.

Plans and manager answers must be JSON of a given shape. Servers that can enforce a JSON
Schema (grammar-constrained sampling: llama.cpp, vLLM, Ollama) make even a small model
produce a parseable answer, so crew asks for the schema where it can. The spellings
differ: the chat completions API says `response_format: {"type": "json_schema", ...}`,
while some compatible servers refuse that (llama-cpp-python's answers HTTP 500) yet
accept `{"type": "json_object", "schema": ...}`. So each spelling is tried in turn when
the server refuses the previous one *because of the format* (its error names it), down
to plain JSON mode (then the agents' repair loop does the rest), and what worked is
remembered per model, so the refusal costs one extra request per process, not per call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NAMES_FORMAT = re.compile(r"response_format|json_schema|schema|\bformat\b|grammar", re.I)

OPENAI_SPELLINGS: tuple[str, ...] = ("json_schema", "json_object_schema", "json_object")
OLLAMA_SPELLINGS: tuple[str, ...] = ("schema", "json")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A spelling the server refused, with what it answered."""

    spelling: str
    status: int | None
    error: str

    def to_dict(self) -> dict[str, object]:
        return {"spelling": self.spelling, "status": self.status, "error": self.error}


def is_format_refusal(status: int | None, message: str) -> bool:
    """A 4xx or 5xx whose message names the format (not a rate limit or a bad key)."""
    if status is None or status < 400 or status in (401, 403, 404, 408, 429):
        return False
    return bool(_NAMES_FORMAT.search(message))


def openai_response_format(
    spelling: str, schema: Mapping[str, Any] | None, name: str
) -> dict[str, Any]:
    """The `response_format` of a chat completions request in `spelling`."""
    if spelling == "json_schema" and schema is not None:
        return {
            "type": "json_schema",
            # not strict: strict mode rejects the bounds (maxItems, maxLength) that keep
            # grammar-constrained sampling short; enforcing servers apply them anyway
            "json_schema": {"name": name, "schema": dict(schema), "strict": False},
        }
    if spelling == "json_object_schema" and schema is not None:
        return {"type": "json_object", "schema": dict(schema)}
    return {"type": "json_object"}


class SpellingMemory:
    """What spelling each model's server accepted, for one provider instance."""

    def __init__(self, spellings: tuple[str, ...]) -> None:
        self.spellings = spellings
        self._accepted: dict[str, str] = {}

    def to_try(self, model: str) -> tuple[str, ...]:
        """The spellings to try for `model`, starting from the last one accepted."""
        accepted = self._accepted.get(model)
        if accepted is None:
            return self.spellings
        return self.spellings[self.spellings.index(accepted) :]

    def accepted(self, model: str, spelling: str) -> None:
        self._accepted[model] = spelling

    def known(self, model: str) -> str | None:
        return self._accepted.get(model)
