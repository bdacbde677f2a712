"""What a provider gives crew: one `ProviderSpec`, the single place a provider is described.

The three built-in providers are specs too (crew/llm/registry.py); another package adds
one by naming its spec in the `crew.providers` entry-point group, the entry point's name
being the provider's name:

    [project.entry-points."crew.providers"]
    echo = "crew_echo_provider:PROVIDER"

From the spec crew derives everything that used to be spread over several modules: how
to build the provider (`factory`), the environment variables it reads (`settings`, shown
by `crew doctor`), whether and how its calls are retried (`retry`), what a call costs
(`price`), how many calls may be in flight (`max_concurrency`), the model it is tried
with as a fallback, and how `crew doctor` checks it. docs/providers.md is the guide.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from crew.domain.errors import ConfigError
from crew.llm.base import Provider
from crew.llm.pricing import Price as Price
from crew.llm.pricing import base_model
from crew.settings import Settings, price_env_key

__all__ = [
    "Price",
    "PriceFn",
    "PriceTable",
    "ProviderCheck",
    "ProviderFactory",
    "ProviderSetting",
    "ProviderSpec",
    "RetryPolicy",
    "free",
]

ProviderFactory = Callable[[Settings], Provider]
"""Builds one provider from the settings; called once per process, on first use."""

ProviderCheck = Callable[[Settings, Provider, Sequence[str | None]], Awaitable[str]]
"""`crew doctor`'s check of a built provider and the models crew will ask it for: returns
one line saying what was checked, raises a CrewError (a ProviderError, a ConfigError) to
fail with that error's message. It must not spend tokens."""


@dataclass(frozen=True, slots=True)
class ProviderSetting:
    """An environment variable (or `.env` entry) a provider reads."""

    name: str
    help: str = ""
    default: str | None = None
    required: bool = False
    """When set and the variable is not, the provider is not built and doctor fails."""
    secret: bool = False
    """Never shown (doctor says only whether it is set)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a provider's transient failures (ProviderError with `retryable`) are retried:
    at most `max_retries` more tries, waiting base_ms * factor ** (n - 1) (with jitter,
    at least the server's Retry-After). A plugin's fixed policy can be changed by the
    operator with `<NAME>_MAX_RETRIES`, `<NAME>_BACKOFF_BASE_MS`, `<NAME>_BACKOFF_FACTOR`."""

    max_retries: int = 3
    base_ms: int = 500
    factor: float = 2.0


class PriceFn(Protocol):
    """What a call to `provider` costs: a Price, or None when nobody priced the model
    (cost recorded as null; warn about it when `warn` is true)."""

    def __call__(
        self,
        settings: Settings,
        provider: str,
        requested_model: str | None,
        response_model: str | None,
        *,
        warn: bool,
    ) -> Price | None: ...


def free(
    settings: Settings,
    provider: str,
    requested_model: str | None,
    response_model: str | None,
    *,
    warn: bool = True,
) -> Price:
    """The price of a provider that costs nothing (it runs locally): source `local`."""
    return Price(0.0, 0.0, "local")


@dataclass(frozen=True, slots=True)
class PriceTable:
    """USD per 1,000 tokens (prompt, completion) by model name, for a PriceFn.

    The operator's `<NAME>_PRICE_PROMPT_<MODEL>_PER_1K` and
    `<NAME>_PRICE_COMPLETION_<MODEL>_PER_1K` win (source `env`); then the table (source
    `<name>:<version>`, so a sidecar can be audited after prices change). Models are
    looked up as requested, as answered, then without a dated suffix. A model in neither
    costs None: crew never guesses a price.
    """

    prices: Mapping[str, tuple[float, float]]
    version: str

    def __call__(
        self,
        settings: Settings,
        provider: str,
        requested_model: str | None,
        response_model: str | None,
        *,
        warn: bool = True,
    ) -> Price | None:
        names = [m for m in (requested_model, response_model) if m]
        names += [base_model(m) for m in names if base_model(m) not in names]
        table = {model.strip().lower(): price for model, price in self.prices.items()}
        prefix = provider.upper()
        for name in names:
            key = price_env_key(name)
            prompt = _env_price(settings, f"{prefix}_PRICE_PROMPT_{key}_PER_1K")
            completion = _env_price(settings, f"{prefix}_PRICE_COMPLETION_{key}_PER_1K")
            if prompt is None and completion is None:
                continue
            listed = table.get(name.strip().lower(), (None, None))
            prompt = listed[0] if prompt is None else prompt
            completion = listed[1] if completion is None else completion
            if prompt is None or completion is None:
                return None  # half a price is no price
            return Price(prompt, completion, "env")
        for name in names:
            found = table.get(name.strip().lower())
            if found is not None:
                return Price(found[0], found[1], f"{provider}:{self.version}")
        return None


def _env_price(settings: Settings, variable: str) -> float | None:
    raw = settings.value(variable)
    if raw is None:
        return None
    try:
        price = float(raw)
    except ValueError:
        price = -1.0
    if not price >= 0:
        raise ConfigError(f"{variable}={raw!r} is invalid: expected a price in USD >= 0")
    return price


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """Everything crew needs to know about one provider (see the module docstring)."""

    name: str
    """Lower case letters, digits and _, starting with a letter; the entry point's name."""
    factory: ProviderFactory
    description: str = ""
    settings: tuple[ProviderSetting, ...] = ()
    retry: RetryPolicy | Callable[[Settings], RetryPolicy] | None = None
    """None: each call is tried once (a failure is left to node retries)."""
    price: PriceFn | None = None
    """None: no call is priced (cost null, warned once per model)."""
    needs_model: bool = True
    """False when the provider answers without a model name (then it can be a fallback
    without `<NAME>_FALLBACK_MODEL`)."""
    max_concurrency: int | Callable[[Settings], int] | None = None
    """Calls in flight at once across the process (None: unbounded); the operator's
    `<NAME>_MAX_CONCURRENCY` wins over a plugin's number."""
    fallback_model: Callable[[Settings], str | None] | None = None
    """The model to try as a fallback; None reads `<NAME>_FALLBACK_MODEL`."""
    check: ProviderCheck | None = None
    """None: doctor builds the provider and, if it has `list_models`, checks the models."""

    def read(self, settings: Settings) -> dict[str, str]:
        """The declared settings that have a value (set, or their default), by name."""
        values: dict[str, str] = {}
        for setting in self.settings:
            value = settings.value(setting.name)
            if value is None:
                value = setting.default
            if value is not None:
                values[setting.name] = value
        return values

    def missing(self, settings: Settings) -> list[ProviderSetting]:
        """The required settings that have no value."""
        values = self.read(settings)
        return [s for s in self.settings if s.required and s.name not in values]
