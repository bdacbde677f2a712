"""Names of the LLM providers crew knows: the built-in ones, then those installed packages add.

Kept in the domain so plan validation, settings and request bodies can check a provider
name before anything runs, without importing the provider implementations. A package
adds a provider by declaring an entry point in the `crew.providers` group whose name is
the provider's name (crew/llm/registry.py loads it and reports the ones that fail).

Reading the installed packages' metadata costs tens of milliseconds, so it happens at
most once per process, and only when a name outside the built-ins is asked about or the
whole list is needed: `crew --help` and a run on built-in providers never pay for it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

BUILTIN_PROVIDERS: tuple[str, ...] = ("offline", "ollama", "openai")
"""The providers that ship with crew, in the order they are listed."""

ENTRY_POINT_GROUP = "crew.providers"
"""The entry-point group a package declares its providers in (name = provider name)."""

_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")
_NAME_CHARACTERS = _LETTERS | frozenset("0123456789_")


def is_provider_name(name: str) -> bool:
    """A provider name: a lower-case letter, then up to 31 lower-case letters, digits or
    `_` (so that its `<NAME>_...` environment variables can be derived). Checked without
    a regular expression: this module is imported by every command."""
    return 0 < len(name) <= 32 and name[0] in _LETTERS and all(c in _NAME_CHARACTERS for c in name)


class ProviderNames:
    """The provider names crew accepts: the built-ins, then the names declared in the
    `crew.providers` entry-point group (valid, not clashing with a built-in, first wins).

    Membership of a built-in name is answered without reading any metadata. A
    Collection (`in`, iteration, `len`), so validation can take it or any other set.
    """

    def __init__(self, builtin: tuple[str, ...]) -> None:
        self.builtin = builtin
        self._entry_points: tuple[EntryPoint, ...] | None = None
        self._plugins: tuple[str, ...] | None = None
        self._lock = threading.Lock()

    def entry_points(self) -> tuple[EntryPoint, ...]:
        """Every entry point of the group, as installed (read once)."""
        with self._lock:
            if self._entry_points is None:
                from importlib.metadata import entry_points

                self._entry_points = tuple(entry_points(group=ENTRY_POINT_GROUP))
            return self._entry_points

    def use(self, entry_points: Iterable[EntryPoint] | None) -> None:
        """Replace the installed entry points (tests), or forget them (None: read again)."""
        with self._lock:
            self._entry_points = None if entry_points is None else tuple(entry_points)
            self._plugins = None

    def plugins(self) -> tuple[str, ...]:
        """The names installed packages add, in the order they were found."""
        names = self._plugins
        if names is None:
            found: list[str] = []
            for entry_point in self.entry_points():
                name = entry_point.name
                if is_provider_name(name) and name not in self.builtin and name not in found:
                    found.append(name)
            names = self._plugins = tuple(found)
        return names

    def accepted(self) -> str:
        """The names, for an error message."""
        return ", ".join(self)

    def __contains__(self, name: object) -> bool:
        return name in self.builtin or (isinstance(name, str) and name in self.plugins())

    def __iter__(self) -> Iterator[str]:
        return iter((*self.builtin, *self.plugins()))

    def __len__(self) -> int:
        return len(self.builtin) + len(self.plugins())


PROVIDER_NAMES = ProviderNames(BUILTIN_PROVIDERS)
"""The one name-set every validation checks against (see ProviderNames)."""
