"""Prompt templates: package data files, French and English, rendered with string.Template.

Templates live in `crew/agents/templates/<language>/<name>.txt` so wording can change
without touching code. `TEMPLATE_VERSION` hashes every template file: the engine puts it
in resume checksums, so a completed node is re-run when the prompts that produced it
changed.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterable
from functools import lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable

from crew.domain.errors import ConfigError
from crew.domain.vocabulary import LANGUAGES

DEFAULT_LANGUAGE = "fr"
EXECUTOR_FAMILIES: tuple[str, ...] = ("writer", "researcher", "reviewer", "manager", "generic")


def _root() -> Traversable:
    return files("crew.agents") / "templates"


def _template_version() -> str:
    """sha256 over every template's language/name and bytes, in sorted order."""
    digest = hashlib.sha256()
    root = _root()
    for language in sorted(entry.name for entry in root.iterdir() if entry.is_dir()):
        folder = root / language
        for name in sorted(entry.name for entry in folder.iterdir() if entry.is_file()):
            digest.update(f"{language}/{name}\0".encode())
            digest.update((folder / name).read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


TEMPLATE_VERSION: str = _template_version()


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ConfigError(
            f"unknown prompt language {language!r} (accepted: {', '.join(LANGUAGES)})"
        )
    return language


@lru_cache(maxsize=128)
def template(language: str, name: str) -> string.Template:
    """The template `name` (without `.txt`) in `language`; trailing newlines removed."""
    path = _root() / check_language(language) / f"{name}.txt"
    if not path.is_file():
        raise ConfigError(f"missing prompt template {language}/{name}.txt")
    return string.Template(path.read_text(encoding="utf-8").rstrip("\n"))


def render(language: str, name: str, **values: object) -> str:
    """Fill a template; a missing value is a programming error and raises KeyError."""
    return template(language, name).substitute({k: str(v) for k, v in values.items()})


def bullets(items: Iterable[str], language: str) -> str:
    """A markdown bullet list, or the language's "(none)" when empty."""
    lines = [f"- {item}" for item in items if item.strip()]
    return "\n".join(lines) if lines else render(language, "empty")


def text_or_none(value: str | None, language: str) -> str:
    return value.strip() if value and value.strip() else render(language, "empty")
