"""What a call costs, in USD, fixed when the call is made.

Prices come, in order, from the environment (`OPENAI_PRICE_PROMPT_<MODEL>_PER_1K` and
`OPENAI_PRICE_COMPLETION_<MODEL>_PER_1K`, so an operator can correct or extend the table
without a release), then from a built-in table whose version is recorded with every cost
(`price_source`), so a sidecar written today can be audited after prices change. Which
provider is priced how is its spec's business (`ProviderSpec.price`, dispatched by
crew/llm/registry.py's `price_for`): local providers cost nothing, the OpenAI-compatible
one uses `list_price` below. A model nobody priced costs None: crew never guesses,
because a wrong number in a budget is worse than a missing one, and it warns once so the
operator knows to add a price.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from crew.settings import Settings, price_env_key

logger = logging.getLogger(__name__)

PRICE_TABLE_VERSION = "2026-11"
"""Bump whenever a price below changes; sidecars record `table:<version>`."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1,000 tokens, and where the figures came from (`env`, `table:<v>`, `local`)."""

    prompt_per_1k: float
    completion_per_1k: float
    source: str


# USD per 1,000 tokens (prompt, completion): OpenAI's public list prices for standard,
# non-batch, non-cached use. Keys are base model names; dated snapshots resolve to them.
PRICE_TABLE: Mapping[str, tuple[float, float]] = {
    "gpt-5": (0.00125, 0.01),
    "gpt-5-mini": (0.00025, 0.002),
    "gpt-5-nano": (0.00005, 0.0004),
    "gpt-4.1": (0.002, 0.008),
    "gpt-4.1-mini": (0.0004, 0.0016),
    "gpt-4.1-nano": (0.0001, 0.0004),
    "gpt-4o": (0.0025, 0.01),
    "gpt-4o-mini": (0.00015, 0.0006),
    "o1": (0.015, 0.06),
    "o3": (0.002, 0.008),
    "o3-mini": (0.0011, 0.0044),
    "o4-mini": (0.0011, 0.0044),
    "gpt-4-turbo": (0.01, 0.03),
    "gpt-4": (0.03, 0.06),
    "gpt-3.5-turbo": (0.0005, 0.0015),
}

# Snapshot suffixes: -2024-07-18 (current style) and -0613 / -0125 (older style).
_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def base_model(model: str) -> str:
    """The model name without a dated snapshot suffix: gpt-4o-mini-2024-07-18 → gpt-4o-mini."""
    match = _DATED.match(model.strip().lower())
    return match.group("base") if match else model.strip().lower()


def _candidates(*models: str | None) -> list[str]:
    """Names to look prices up by: each model as given, then each without its date suffix."""
    names: list[str] = []
    for model in models:
        if model and model not in names:
            names.append(model)
    for model in list(names):
        base = base_model(model)
        if base not in names:
            names.append(base)
    return names


def table_price(model: str) -> tuple[float, float] | None:
    """(prompt, completion) per 1K tokens from the built-in table, dated names included."""
    return PRICE_TABLE.get(model.strip().lower()) or PRICE_TABLE.get(base_model(model))


def list_price(
    settings: Settings,
    provider: str,
    requested_model: str | None,
    response_model: str | None,
    *,
    warn: bool = True,
) -> Price | None:
    """The price of an OpenAI-compatible call, or None when nobody priced the model
    (warned once per process, unless `warn` is False: diagnostics report it themselves).

    Env overrides are looked up by the requested model, then by the response's model (then
    by either without its date suffix); a half given in the env completes with the table's
    other half for the same model.
    """
    names = _candidates(requested_model, response_model)
    for name in names:
        key = price_env_key(name)
        prompt = settings.openai_prompt_prices.get(key)
        completion = settings.openai_completion_prices.get(key)
        if prompt is None and completion is None:
            continue
        table = table_price(name)
        if prompt is None and table is not None:
            prompt = table[0]
        if completion is None and table is not None:
            completion = table[1]
        if prompt is not None and completion is not None:
            return Price(prompt, completion, "env")
        if warn:
            warn_once(provider, name, f"OPENAI_PRICE_*_{key}_PER_1K sets only one of two prices")
        return None
    for name in names:
        table = table_price(name)
        if table is not None:
            return Price(table[0], table[1], f"table:{PRICE_TABLE_VERSION}")
    model = requested_model or response_model or "(no model)"
    if not warn:
        return None
    warn_once(
        provider,
        model,
        "no price known; cost is recorded as null. Set "
        f"OPENAI_PRICE_PROMPT_{price_env_key(model)}_PER_1K and "
        f"OPENAI_PRICE_COMPLETION_{price_env_key(model)}_PER_1K",
    )
    return None


def is_served(model: str, served: frozenset[str]) -> bool:
    """True when the server lists `model` (or the same model under a dated name)."""
    wanted = {model.strip().lower(), base_model(model)}
    return any(m.strip().lower() in wanted or base_model(m) in wanted for m in served)


def served_price(
    price: Price, provider: str, model: str | None, served: frozenset[str] | None
) -> Price | None:
    """A list price, kept only when the server serves the model it is the price of.

    A compatible server (a local one above all) answers under whatever model name it is
    asked for; pricing those calls at the list price of a hosted model would make up
    costs. A server whose list cannot be read cannot confirm it either: such calls are
    priced only by prices set explicitly (OPENAI_PRICE_*), and warned about once.
    """
    if model is None:
        return None
    if served is not None and is_served(model, served):
        return price
    why = (
        "the server's model list could not be read"
        if served is None
        else "the server does not list this model"
    )
    warn_once(
        provider,
        model,
        f"{why}, so its list price does not apply and cost is recorded as null; set "
        f"OPENAI_PRICE_PROMPT_{price_env_key(model)}_PER_1K and "
        f"OPENAI_PRICE_COMPLETION_{price_env_key(model)}_PER_1K (0 for a free model)",
    )
    return None


def warn_once(provider: str, model: str, why: str) -> None:
    """Log `why` about a model's price once per process (per provider and model)."""
    with _warned_lock:
        if (provider, model) in _warned:
            return
        _warned.add((provider, model))
    logger.warning("model %s (provider %s): %s", model, provider, why)


def reset_warnings() -> None:
    """Forget which models were warned about (tests, long-lived processes after a reload)."""
    with _warned_lock:
        _warned.clear()


def cost_usd(price: Price, input_tokens: int, output_tokens: int) -> float:
    """The cost of a call; rounded to 1e-9 USD so sums do not show float noise."""
    cost = (
        input_tokens / 1000 * price.prompt_per_1k + output_tokens / 1000 * price.completion_per_1k
    )
    return round(cost, 9)


def worst_case_cost(price: Price, input_tokens_estimate: int, max_tokens: int) -> float:
    """The most a call can cost: its prompt plus every token it may generate (for budgets)."""
    return cost_usd(price, input_tokens_estimate, max_tokens)
