"""Providers by name, built lazily from settings.

Building a provider may open an HTTP client, so nothing is built until a call needs it,
and `aclose()` closes what was built. A provider that is configured but cannot be built
is an error: crew never answers with the offline provider in its place.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from crew.domain.errors import ConfigError
from crew.domain.providers import PROVIDER_NAMES
from crew.llm.base import Provider
from crew.llm.offline import OfflineProvider
from crew.settings import Settings

ProviderFactory = Callable[[Settings], Provider]
"""Builds one provider from the settings."""


def lazy_factory(module: str, attribute: str) -> ProviderFactory:
    """A factory that imports `module` only when the provider is first needed.

    `attribute` is called with the Settings (a class taking `settings`, or a function),
    so HTTP libraries stay out of commands that never call that provider.
    """

    def build(settings: Settings) -> Provider:
        factory = getattr(importlib.import_module(module), attribute)
        provider: Provider = factory(settings)
        return provider

    return build


def _offline(settings: Settings) -> Provider:
    return OfflineProvider(latency_ms=settings.offline_latency_ms)


FACTORIES: dict[str, ProviderFactory] = {
    "offline": _offline,
    "ollama": lazy_factory("crew.llm.ollama", "from_settings"),
    "openai": lazy_factory("crew.llm.openai", "from_settings"),
}


class ProviderRegistry:
    """Builds and caches providers; tests inject fakes with `register`."""

    def __init__(
        self, settings: Settings, factories: dict[str, ProviderFactory] | None = None
    ) -> None:
        self.settings = settings
        self._factories = dict(FACTORIES if factories is None else factories)
        self._providers: dict[str, Provider] = {}

    def register(self, name: str, provider: Provider) -> None:
        """Use `provider` for `name` from now on (replaces any built one)."""
        self._providers[name] = provider

    def get(self, name: str) -> Provider:
        """The provider called `name`, built on first use.

        Raises ConfigError for an unknown name or a provider this build cannot make.
        """
        provider = self._providers.get(name)
        if provider is not None:
            return provider
        factory = self._factories.get(name)
        if factory is None:
            if name in PROVIDER_NAMES:
                raise ConfigError(
                    f"LLM provider {name!r} is not available yet in this version of crew; "
                    f"available: {', '.join(sorted(self.available()))}"
                )
            raise ConfigError(
                f"unknown LLM provider {name!r} (accepted: {', '.join(PROVIDER_NAMES)})"
            )
        provider = factory(self.settings)
        self._providers[name] = provider
        return provider

    def available(self) -> set[str]:
        return set(self._factories) | set(self._providers)

    async def aclose(self) -> None:
        """Close every provider built or registered so far."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()
