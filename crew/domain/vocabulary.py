"""Names the whole product shares: role kinds, prompt languages, the default title.

Defined once here (the bottom layer) so settings, the API, the engine and the agents
cannot drift apart.
"""

from __future__ import annotations

ROLE_KINDS: tuple[str, ...] = ("supervisor", "manager", "executor", "recruiter")
"""The kinds of agent an LLM setting applies to (`<ROLE>_PROVIDER`, `--executor-model`...)."""

REQUEST_ROLE_KINDS: tuple[str, ...] = ("supervisor", "manager", "executor")
"""The kinds a run's request may choose a provider and model for (the recruiter is the
server's own)."""

LANGUAGES: tuple[str, ...] = ("fr", "en")
"""Prompt template languages (CREW_LANGUAGE)."""

DEFAULT_TITLE = "Rapport 80p"
"""The goal's title when none is given (the prototype's demo task)."""
