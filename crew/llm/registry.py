"""The one registration point of LLM providers, and the registry that builds them.

Every provider is a `ProviderSpec` (crew/llm/plugins.py): the three built-in ones below,
and those installed packages name in the `crew.providers` entry-point group. Routing,
fallback, retries, concurrency limits, prices, `crew doctor` and the API schema all ask
this module, so adding a provider touches nothing else.

Plugins are loaded lazily, once per process, the first time a name outside the built-ins
or the whole list is needed (a run on built-in providers never reads package metadata).
A plugin that fails to load — an import error, an object that is not a ProviderSpec, a
name that clashes with a built-in or another plugin — is logged as a warning naming its
package and the reason, kept in `plugin_failures()` for `crew doctor`, and skipped: the
other providers are unaffected.

Building a provider may open an HTTP client, so nothing is built until a call needs it,
and `aclose()` closes what was built. A provider that is configured but cannot be built
is an error: crew never answers with the offline provider in its place.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from crew.domain.errors import ConfigError, CrewError
from crew.domain.providers import BUILTIN_PROVIDERS, PROVIDER_NAMES, is_provider_name
from crew.llm.base import Provider
from crew.llm.offline import OfflineProvider
from crew.llm.plugins import (
    Price,
    ProviderFactory,
    ProviderSetting,
    ProviderSpec,
    RetryPolicy,
    free,
)
from crew.llm.pricing import list_price, warn_once
from crew.settings import Settings

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

log = logging.getLogger("crew.llm.plugins")

T = TypeVar("T", int, float)


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


def _http_retry(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        settings.openai_max_retries, settings.openai_backoff_base_ms, settings.openai_backoff_factor
    )


_RETRY_SETTINGS = (
    ProviderSetting("OPENAI_MAX_RETRIES", "retries of a failed call", "3"),
    ProviderSetting("OPENAI_BACKOFF_BASE_MS", "first retry wait, in ms", "500"),
    ProviderSetting("OPENAI_BACKOFF_FACTOR", "growth of the retry wait", "2.0"),
)

BUILTIN_SPECS: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        name="offline",
        factory=_offline,
        description="built in: deterministic answers, no network",
        settings=(ProviderSetting("OFFLINE_LATENCY_MS", "simulated latency", "0"),),
        price=free,
        needs_model=False,
        fallback_model=lambda settings: None,
    ),
    ProviderSpec(
        name="ollama",
        factory=lazy_factory("crew.llm.ollama", "from_settings"),
        description="built in: an Ollama server",
        settings=(
            ProviderSetting("OLLAMA_BASE_URL", "server URL", "http://localhost:11434"),
            ProviderSetting("OLLAMA_FALLBACK_MODEL", "model tried as a fallback"),
            ProviderSetting("OLLAMA_MAX_CONCURRENCY", "calls in flight at once", "2"),
            *_RETRY_SETTINGS,
        ),
        retry=_http_retry,
        price=free,
        max_concurrency=lambda settings: settings.ollama_max_concurrency,
        fallback_model=lambda settings: settings.ollama_fallback_model,
    ),
    ProviderSpec(
        name="openai",
        factory=lazy_factory("crew.llm.openai", "from_settings"),
        description="built in: an OpenAI-compatible server",
        settings=(
            ProviderSetting("OPENAI_API_KEY", "API key", secret=True),
            ProviderSetting("OPENAI_BASE_URL", "server URL", "https://api.openai.com/v1"),
            ProviderSetting("OPENAI_FALLBACK_MODEL", "model tried as a fallback"),
            ProviderSetting("OPENAI_MAX_CONCURRENCY", "calls in flight at once", "8"),
            *_RETRY_SETTINGS,
        ),
        retry=_http_retry,
        price=list_price,
        max_concurrency=lambda settings: settings.openai_max_concurrency,
        fallback_model=lambda settings: settings.openai_fallback_model,
    ),
)
_BUILTINS: dict[str, ProviderSpec] = {spec.name: spec for spec in BUILTIN_SPECS}
assert tuple(_BUILTINS) == BUILTIN_PROVIDERS  # the domain's names are these specs'

FACTORIES: dict[str, ProviderFactory] = {}
"""Factories used instead of a spec's own, by provider name: empty unless a test installs
a fake (every registry built afterwards uses it)."""


@dataclass(frozen=True, slots=True)
class Plugin:
    """A provider an installed package added."""

    spec: ProviderSpec
    package: str
    version: str | None


@dataclass(frozen=True, slots=True)
class PluginFailure:
    """An entry point of `crew.providers` that added no provider, and why."""

    name: str
    package: str
    reason: str


@dataclass(slots=True)
class _Loaded:
    plugins: dict[str, Plugin]
    failures: list[PluginFailure]


_loaded: _Loaded | None = None
_lock = threading.RLock()
"""Reentrant: a plugin whose import asks for a provider gets the plugins loaded so far."""


def _package(entry_point: EntryPoint) -> tuple[str, str | None]:
    dist = entry_point.dist
    if dist is None:
        return entry_point.module, None
    return dist.name, dist.version


def _load_one(entry_point: EntryPoint, loaded: _Loaded) -> None:
    name = entry_point.name
    package, version = _package(entry_point)
    reason: str | None = None
    spec: object = None
    if name in _BUILTINS:
        reason = f"the name {name!r} is a built-in provider's"
    elif not is_provider_name(name):
        reason = f"{name!r} is not a provider name (lower case letters, digits, _; 1-32)"
    elif name in loaded.plugins:
        reason = f"package {loaded.plugins[name].package} already adds a provider {name!r}"
    else:
        try:
            spec = entry_point.load()
        except Exception as error:  # anything a plugin's import raises
            reason = f"cannot import {entry_point.value}: {type(error).__name__}: {error}"
        else:
            if not isinstance(spec, ProviderSpec):
                reason = (
                    f"{entry_point.value} is a {type(spec).__name__}, "
                    "not a crew.llm.plugins.ProviderSpec"
                )
            elif spec.name != name:
                reason = f"{entry_point.value} describes a provider named {spec.name!r}"
            elif not callable(spec.factory):
                reason = f"{entry_point.value} has no callable factory"
    if reason is not None or not isinstance(spec, ProviderSpec):
        failure = PluginFailure(name, package, reason or "not a ProviderSpec")
        loaded.failures.append(failure)
        log.warning(
            "provider plugin %r from package %s is not loaded: %s",
            failure.name,
            failure.package,
            failure.reason,
        )
        return
    loaded.plugins[name] = Plugin(spec, package, version)


def _plugins() -> _Loaded:
    global _loaded
    with _lock:
        if _loaded is None:
            loaded = _loaded = _Loaded({}, [])
            try:
                for entry_point in PROVIDER_NAMES.entry_points():
                    _load_one(entry_point, loaded)
            except BaseException:
                _loaded = None  # interrupted: try again next time
                raise
        return _loaded


def plugins() -> Mapping[str, Plugin]:
    """The providers installed packages added (loads them on first use)."""
    return dict(_plugins().plugins)


def plugin_failures() -> tuple[PluginFailure, ...]:
    """The entry points that failed to add a provider (loads them on first use)."""
    return tuple(_plugins().failures)


def reload_plugins(entry_points: Iterable[EntryPoint] | None = None) -> None:
    """Forget the loaded plugins: the next use reads the installed entry points again, or
    `entry_points` when given (tests pass fakes)."""
    global _loaded
    with _lock:
        PROVIDER_NAMES.use(entry_points)
        _loaded = None


def provider_spec(name: str) -> ProviderSpec | None:
    """The spec of provider `name`; None when no provider has that name (a built-in name
    is answered without loading plugins)."""
    spec = _BUILTINS.get(name)
    if spec is not None:
        return spec
    plugin = _plugins().plugins.get(name)
    return plugin.spec if plugin is not None else None


def provider_names() -> tuple[str, ...]:
    """The providers this process can build: the built-ins, then the loaded plugins."""
    return (*BUILTIN_PROVIDERS, *_plugins().plugins)


def _failure(name: str) -> PluginFailure | None:
    if name in _BUILTINS:
        return None
    return next((f for f in _plugins().failures if f.name == name), None)


def _env_number(
    settings: Settings, variable: str, convert: Callable[[str], T], low: T, accepted: str
) -> T | None:
    raw = settings.value(variable)
    if raw is None:
        return None
    try:
        number = convert(raw)
    except ValueError:
        number = None
    if number is None or not number >= low:
        raise ConfigError(f"{variable}={raw!r} is invalid: expected {accepted}")
    return number


def retry_policy(settings: Settings, name: str) -> RetryPolicy | None:
    """How calls to `name` are retried; None when they are tried once."""
    spec = provider_spec(name)
    if spec is None or spec.retry is None:
        return None
    if not isinstance(spec.retry, RetryPolicy):
        return spec.retry(settings)
    prefix = name.upper()
    policy = spec.retry
    retries = _env_number(settings, f"{prefix}_MAX_RETRIES", int, 0, "an integer >= 0")
    base_ms = _env_number(settings, f"{prefix}_BACKOFF_BASE_MS", int, 0, "an integer >= 0 (ms)")
    factor = _env_number(settings, f"{prefix}_BACKOFF_FACTOR", float, 1e-9, "a number > 0")
    return RetryPolicy(
        policy.max_retries if retries is None else retries,
        policy.base_ms if base_ms is None else base_ms,
        policy.factor if factor is None else factor,
    )


def max_concurrency(settings: Settings, name: str) -> int | None:
    """The most calls to `name` in flight at once; None means unbounded."""
    spec = provider_spec(name)
    if spec is None:
        return None
    if callable(spec.max_concurrency):
        return spec.max_concurrency(settings)
    variable = f"{name.upper()}_MAX_CONCURRENCY"
    configured = _env_number(settings, variable, int, 1, "an integer >= 1")
    return spec.max_concurrency if configured is None else configured


def needs_model(name: str) -> bool:
    """Whether `name` needs a model name to be tried as a fallback (unknown names do not:
    trying them reports why they cannot be built)."""
    spec = provider_spec(name)
    return spec is not None and spec.needs_model


def configured_fallback_model(settings: Settings, name: str) -> str | None:
    """The model `name` is tried with as a fallback when the operator set one."""
    spec = provider_spec(name)
    if spec is not None and spec.fallback_model is not None:
        return spec.fallback_model(settings)
    return settings.value(f"{name.upper()}_FALLBACK_MODEL")


def price_for(
    settings: Settings,
    provider: str,
    requested_model: str | None,
    response_model: str | None,
    *,
    warn: bool = True,
) -> Price | None:
    """The price of a call to `provider`, as its spec prices it; None when nobody priced
    the model (warned once per process, unless `warn` is False: doctor reports it)."""
    spec = provider_spec(provider)
    if spec is not None and spec.price is not None:
        return spec.price(settings, provider, requested_model, response_model, warn=warn)
    if warn:
        model = requested_model or response_model or "(no model)"
        warn_once(provider, model, "the provider declares no prices; cost is recorded as null")
    return None


class ProviderRegistry:
    """Builds and caches providers; tests inject fakes with `register` or `factories`."""

    def __init__(
        self, settings: Settings, factories: dict[str, ProviderFactory] | None = None
    ) -> None:
        self.settings = settings
        self._factories = None if factories is None else dict(factories)
        self._providers: dict[str, Provider] = {}

    def register(self, name: str, provider: Provider) -> None:
        """Use `provider` for `name` from now on (replaces any built one)."""
        self._providers[name] = provider

    def get(self, name: str) -> Provider:
        """The provider called `name`, built on first use.

        Raises ConfigError for an unknown name, a plugin that failed to load, a required
        setting that is missing, or a provider that cannot be built.
        """
        provider = self._providers.get(name)
        if provider is not None:
            return provider
        factory = self._factory(name)
        try:
            provider = factory(self.settings)
        except CrewError:
            raise
        except Exception as error:  # a plugin's factory: report it, do not crash
            raise ConfigError(
                f"LLM provider {name!r} could not be built: {type(error).__name__}: {error}"
            ) from error
        if not isinstance(provider, Provider):
            raise ConfigError(
                f"LLM provider {name!r} could not be built: its factory returned a "
                f"{type(provider).__name__}, not a provider (name, complete, aclose)"
            )
        self._providers[name] = provider
        return provider

    def _factory(self, name: str) -> ProviderFactory:
        if self._factories is not None:
            factory = self._factories.get(name)
            if factory is None:
                raise self._unknown(name)
            return factory
        override = FACTORIES.get(name)
        if override is not None:
            return override
        spec = provider_spec(name)
        if spec is None:
            raise self._unknown(name)
        missing = spec.missing(self.settings)
        if missing:
            needed = "; ".join(f"{s.name} ({s.help})" if s.help else s.name for s in missing)
            raise ConfigError(f"LLM provider {name!r} needs settings that are not set: {needed}")
        return spec.factory

    def _unknown(self, name: str) -> ConfigError:
        failure = _failure(name)
        if failure is not None:
            return ConfigError(
                f"LLM provider {name!r} (package {failure.package}) could not be loaded: "
                f"{failure.reason}"
            )
        if name in PROVIDER_NAMES:
            return ConfigError(
                f"LLM provider {name!r} is not available yet in this version of crew; "
                f"available: {', '.join(sorted(self.available()))}"
            )
        return ConfigError(
            f"unknown LLM provider {name!r} (accepted: {', '.join(self.available_names())})"
        )

    def available_names(self) -> list[str]:
        """The names this registry can build, built-ins first."""
        if self._factories is not None:
            names = list(self._factories)
        else:
            names = [*provider_names(), *(n for n in FACTORIES if n not in _BUILTINS)]
        return [*dict.fromkeys([*names, *self._providers])]

    def available(self) -> set[str]:
        return set(self.available_names())

    async def aclose(self) -> None:
        """Close every provider built or registered so far."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()
