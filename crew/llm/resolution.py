"""Which provider, model and sampling settings a role's call uses, and why.

One precedence rule everywhere: CLI flags > node > request options > `<ROLE>_*` settings
> `LLM_DEFAULT_*`. The result records where each value came from, for dry runs,
`crew doctor` and sidecars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crew.domain.errors import ConfigError
from crew.domain.plan import LLMSpec
from crew.settings import ROLE_NAMES, Settings

DEFAULT_OVERRIDE_SOURCES: tuple[str, ...] = ("cli", "node", "request")
"""Labels of the override layers by position; pass None for a layer that is absent."""


@dataclass(frozen=True, slots=True)
class ResolvedLLM:
    provider: str
    model: str | None
    """None means "the provider's default model"."""
    temperature: float
    max_tokens: int
    timeout_s: float
    sources: Mapping[str, str] = field(default_factory=dict)
    """Field name -> "cli" / "node" / "request" / "role" / "default"."""


def resolve_llm(
    settings: Settings,
    role_kind: str,
    *chosen: LLMSpec | None,
    sources: Sequence[str] = DEFAULT_OVERRIDE_SOURCES,
) -> ResolvedLLM:
    """Resolve each field from the first layer that sets it: the `chosen` layers (flags,
    node, request, in that order), then the role's settings, then the defaults.

    A model belongs to a provider: a layer's model is skipped when that same layer names
    a different provider than the one resolved (so a node asking for `ollama` does not
    inherit `LLM_DEFAULT_MODEL=gpt-4o-mini` meant for the default provider).
    """
    if role_kind not in ROLE_NAMES:
        raise ConfigError(f"unknown role kind {role_kind!r} (accepted: {', '.join(ROLE_NAMES)})")
    role = settings.for_role_kind(role_kind)
    layers: list[tuple[str, LLMSpec]] = []
    for position, spec in enumerate(chosen):
        if spec is not None:
            label = sources[position] if position < len(sources) else f"override{position + 1}"
            layers.append((label, spec))
    layers.append(
        (
            "role",
            LLMSpec(
                provider=role.provider,
                model=role.model,
                temperature=role.temperature,
                max_tokens=role.max_tokens,
                timeout_s=role.timeout_s,
            ),
        )
    )
    layers.append(
        (
            "default",
            LLMSpec(
                provider=settings.llm_default_provider,
                model=settings.llm_default_model,
                temperature=settings.llm_default_temperature,
                max_tokens=settings.llm_default_max_tokens,
                timeout_s=settings.llm_timeout_s,
            ),
        )
    )
    provider, provider_source = _first(layers, "provider")
    model_layers = [(label, spec) for label, spec in layers if spec.provider in (None, provider)]
    model, model_source = _first(model_layers, "model")
    temperature, temperature_source = _first(layers, "temperature")
    max_tokens, max_tokens_source = _first(layers, "max_tokens")
    timeout_s, timeout_source = _first(layers, "timeout_s")
    origin = {
        "provider": provider_source,
        "temperature": temperature_source,
        "max_tokens": max_tokens_source,
        "timeout_s": timeout_source,
    }
    if model is not None:
        origin["model"] = model_source
    return ResolvedLLM(
        provider=str(provider),
        model=str(model) if model is not None else None,
        temperature=float(temperature),
        max_tokens=int(max_tokens),
        timeout_s=float(timeout_s),
        sources=origin,
    )


def _first(layers: Sequence[tuple[str, LLMSpec]], name: str) -> tuple[Any, str]:
    """The first non-None value of field `name` and the label of its layer."""
    for label, spec in layers:
        value = getattr(spec, name)
        if value is not None:
            return value, label
    return None, "default"
