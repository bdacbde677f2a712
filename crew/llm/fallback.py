"""Where a call goes when its provider cannot answer: LLM_FALLBACK_ORDER, made concrete.

A model name belongs to its provider, so each fallback provider gets a model of its own
(`<PROVIDER>_FALLBACK_MODEL`), and `offline` is only tried when it is listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from crew.settings import Settings

RETRIED_PROVIDERS: frozenset[str] = frozenset({"ollama", "openai"})
"""Providers whose calls are retried here (OPENAI_MAX_RETRIES and backoff settings).

The offline provider cannot fail transiently, so it is called once; a failure of any
other provider is left to the caller (node retries).
"""


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
    configured = {
        "ollama": settings.ollama_fallback_model,
        "openai": settings.openai_fallback_model,
    }.get(provider)
    if configured:
        return configured
    if settings.llm_default_provider == provider:
        return settings.llm_default_model
    return None


def call_candidates(settings: Settings, provider: str, model: str | None) -> list[Candidate]:
    """The resolved provider first, then LLM_FALLBACK_ORDER, each at most once.

    `offline` is only ever tried when it is listed: crew never answers with it silently.
    A provider listed again with the same model is skipped (its retries already ran);
    an HTTP provider without a fallback model is reported, not guessed at.
    """
    candidates = [Candidate(provider, model)]
    seen = {(provider, model)}
    for name in settings.llm_fallback_order:
        chosen = fallback_model(settings, name)
        if (name, chosen) in seen or (name == provider and chosen is None):
            continue
        seen.add((name, chosen))
        if chosen is None and name in RETRIED_PROVIDERS:
            candidates.append(
                Candidate(name, None, f"no fallback model: set {name.upper()}_FALLBACK_MODEL")
            )
            continue
        candidates.append(Candidate(name, chosen))
    return candidates
