"""Names of the LLM providers crew knows.

Kept in the domain so plan validation and settings can check a provider name before
anything runs, without importing the provider implementations.
"""

from __future__ import annotations

PROVIDER_NAMES: tuple[str, ...] = ("offline", "ollama", "openai")
