"""Where a call goes when its provider cannot answer: LLM_FALLBACK_ORDER, made concrete.

A model name belongs to its provider, so each fallback provider gets a model of its own
(`<PROVIDER>_FALLBACK_MODEL`, or what its spec says), and `offline` is only tried when it
is listed. Any registered provider, a plugin's included, can be listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from crew.llm.registry import configured_fallback_model, needs_model
from crew.settings import Settings


@dataclass(frozen=True, slots=True)
class Candidate:
    """A provider and model to try for one call; `skip` says why it cannot be tried."""

    provider: str
    model: str | None
    skip: str | None = None


def fallback_model(settings: Settings, provider: str) -> str | None:
    """The model a provider is tried with as a fallback.

    `<PROVIDER>_FALLBACK_MODEL` when set; otherwise LLM_DEFAULT_MODEL when that provider is
    LLM_DEFAULT_PROVIDER (the model was chosen for it). Never the failed call's model: a
    model name belongs to its provider, and an Ollama tag means nothing to another server.
    """
    configured = configured_fallback_model(settings, provider)
    if configured:
        return configured
    if settings.llm_default_provider == provider:
        return settings.llm_default_model
    return None


def call_candidates(settings: Settings, provider: str, model: str | None) -> list[Candidate]:
    """The resolved provider first, then LLM_FALLBACK_ORDER, each at most once.

    `offline` is only ever tried when it is listed: crew never answers with it silently.
    A provider listed again with the same model is skipped (its retries already ran);
    a provider that needs a model and has no fallback model is reported, not guessed at.
    """
    candidates = [Candidate(provider, model)]
    seen = {(provider, model)}
    for name in settings.llm_fallback_order:
        chosen = fallback_model(settings, name)
        if (name, chosen) in seen or (name == provider and chosen is None):
            continue
        seen.add((name, chosen))
        if chosen is None and needs_model(name):
            candidates.append(
                Candidate(name, None, f"no fallback model: set {name.upper()}_FALLBACK_MODEL")
            )
            continue
        candidates.append(Candidate(name, chosen))
    return candidates
