"""The one place that turns "a role wants to call an LLM" into a provider call.

Agents never pick a provider themselves: they name their role kind and pass the layers
of LLM setting layers they know about; `LLMClient.resolve` applies the one precedence rule
(crew/llm/resolution.py). `LLMClient.call` then makes the call the way every caller
needs it made: within the provider's concurrency limit, retried on transient failures
(as the provider's spec says), handed to LLM_FALLBACK_ORDER when the provider cannot answer
(crew/llm/fallback.py) — straight away while a provider's circuit is open
(crew/llm/circuit.py) — priced once, and checked against a run budget before it starts.
Every try is recorded, because the sidecar shows them, and every call, answered or not,
goes to the current ledger (crew/llm/ledger.py), because a failed node spent it too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from crew.domain.clock import utcnow
from crew.domain.errors import ConfigError, NoProviderAnsweredError, ProviderError
from crew.domain.plan import LLMSpec
from crew.llm import ledger
from crew.llm.base import LLMRequest, LLMResponse, Message, PromptTooLongError, Provider
from crew.llm.calls import CallBudget, CallObserver, CallResult
from crew.llm.circuit import CircuitBreaker
from crew.llm.fallback import call_candidates
from crew.llm.limits import ProviderLimits
from crew.llm.pricing import Price, cost_usd, served_price
from crew.llm.registry import ProviderRegistry, price_for, retry_policy
from crew.llm.resolution import ResolvedLLM, resolve_llm
from crew.llm.retry import Attempt, with_retries
from crew.settings import Settings

__all__ = ["CallBudget", "CallObserver", "CallResult", "LLMClient"]

log = logging.getLogger("crew.llm")


@dataclass(slots=True)
class _Outcome:
    response: LLMResponse
    request: LLMRequest
    provider: str
    attempt_log: list[Attempt]
    fallback_from: str | None
    reservation: object | None


class LLMClient:
    """Resolves, calls, times and prices LLM calls for every agent.

    One client per process: its ProviderLimits are what bound calls in flight to each
    provider across every node and run. `with_budget` returns a view that shares them.
    """

    def __init__(
        self,
        settings: Settings,
        providers: ProviderRegistry,
        *,
        limits: ProviderLimits | None = None,
        budget: CallBudget | None = None,
        observer: CallObserver | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.limits = limits if limits is not None else ProviderLimits(settings)
        self.budget = budget
        self.observer = observer
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._served: dict[str, frozenset[str] | None] = {}
        """Per provider, the models its server lists (None: the list could not be read);
        read once, only to decide whether a list price applies."""
        self._resolved: dict[tuple[str, tuple[LLMSpec | None, ...]], ResolvedLLM] = {}
        """resolve_llm's answers: the settings are fixed, so a role kind and its layers
        always resolve the same way, and a run asks thousands of times."""

    def with_budget(self, budget: CallBudget | None) -> LLMClient:
        """This client with every call checked against `budget` (shares providers, limits,
        observer)."""
        client = LLMClient(
            self.settings,
            self.providers,
            limits=self.limits,
            budget=budget,
            observer=self.observer,
            breaker=self.breaker,
        )
        client._resolved = self._resolved
        client._served = self._served
        return client

    def resolve(self, role_kind: str, llm_layers: Sequence[LLMSpec | None] = ()) -> ResolvedLLM:
        key = (role_kind, tuple(llm_layers))
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = self._resolved[key] = resolve_llm(self.settings, role_kind, *llm_layers)
        return resolved

    async def call(
        self,
        role_kind: str,
        agent_role: str,
        messages: Sequence[Message],
        *,
        wants_json: bool = False,
        json_schema: Mapping[str, Any] | None = None,
        schema_name: str = "answer",
        llm_layers: Sequence[LLMSpec | None] = (),
        budget: CallBudget | None = None,
    ) -> CallResult:
        """Make one call; raises ProviderError when nothing could answer and
        BudgetExceededError when the budget refused it (nothing was sent then).

        `json_schema` asks for an answer following that schema (and JSON at all); the
        provider enforces it where it can, the caller still validates.
        """
        budget = budget if budget is not None else self.budget
        resolved = self.resolve(role_kind, llm_layers)
        request = LLMRequest(
            role=agent_role,
            messages=tuple(messages),
            model=resolved.model,
            temperature=resolved.temperature,
            max_tokens=resolved.max_tokens,
            timeout_s=resolved.timeout_s,
            wants_json=wants_json or json_schema is not None,
            json_schema=json_schema,
            schema_name=schema_name,
        )
        started_at = utcnow()
        clock = time.perf_counter()
        attempt_log: list[Attempt] = []
        try:
            outcome = await self._complete(request, resolved, budget, attempt_log)
        except ProviderError as error:
            book = ledger.current()
            if book is not None and attempt_log:
                book.failed.append(
                    ledger.FailedCall(
                        request=request,
                        provider=resolved.provider,
                        model=resolved.model,
                        started_at=started_at,
                        ended_at=utcnow(),
                        elapsed_ms=(time.perf_counter() - clock) * 1000.0,
                        error=error.message,
                        attempt_log=list(attempt_log),
                    )
                )
            raise
        ended_at = utcnow()
        response = outcome.response
        cost, price_source = await self._price(outcome.provider, outcome.request.model, response)
        result = CallResult(
            request=outcome.request,
            response=response,
            provider=outcome.provider,
            model=outcome.request.model or response.model,
            started_at=started_at,
            ended_at=ended_at,
            attempts=len(outcome.attempt_log) or 1,
            fallback_from=outcome.fallback_from,
            cost_usd=cost,
            price_source=price_source,
            resolved=resolved,
            attempt_log=outcome.attempt_log,
            elapsed_ms=(time.perf_counter() - clock) * 1000.0,
        )
        book = ledger.current()
        if book is not None:
            book.answered.append(result)
        if budget is not None:
            budget.settle(outcome.reservation, result)
        if self.observer is not None:
            self.observer.call_done(result)
        return result

    async def _complete(
        self,
        request: LLMRequest,
        resolved: ResolvedLLM,
        budget: CallBudget | None,
        attempt_log: list[Attempt],
    ) -> _Outcome:
        """Try the resolved provider, then LLM_FALLBACK_ORDER, until one answers.

        Each provider is reserved against the budget at its own price before it is tried
        (a fallback may cost more than the provider it replaces); a failed try releases
        its reservation. A fallback is recorded in `fallback_from`, never hidden. A
        provider whose circuit is open is passed over while a later one can be tried; a
        prompt too long for the model ends the call at once (see PromptTooLongError).
        """
        reasons: list[str] = []
        errors: list[ProviderError] = []
        candidates = call_candidates(self.settings, resolved.provider, resolved.model)
        for index, candidate in enumerate(candidates):
            label = (
                f"{candidate.provider}/{candidate.model}" if candidate.model else candidate.provider
            )
            if candidate.skip is not None:
                reasons.append(f"{label}: {candidate.skip}")
                continue
            key = (candidate.provider, candidate.model)
            retried = retry_policy(self.settings, candidate.provider) is not None
            mode = self.breaker.admit(key) if retried else "normal"
            if mode is None:
                if any(c.skip is None for c in candidates[index + 1 :]):
                    reasons.append(f"{label}: {self.breaker.why_open(key)}")
                    continue
                mode = "normal"  # the last provider left: tried, never failed unasked
            if index == 0:
                provider = self.providers.get(candidate.provider)  # misconfigured: ConfigError
            else:
                try:
                    provider = self.providers.get(candidate.provider)
                except ConfigError as error:
                    reasons.append(f"{label}: {error.message}")
                    continue
            attempt_request = request if index == 0 else replace(request, model=candidate.model)
            reservation = None
            try:
                if budget is not None:
                    price = await self.price(candidate.provider, attempt_request.model, None)
                    reservation = await budget.reserve(attempt_request, price)
                response = await self._attempt(
                    candidate.provider,
                    provider,
                    attempt_request,
                    attempt_log,
                    probe=mode == "probe",
                )
            except ProviderError as error:
                if budget is not None:
                    budget.settle(reservation, None)
                if retried and error.retryable:
                    self.breaker.failed(key)
                else:
                    self.breaker.released(key)
                if isinstance(error, PromptTooLongError):
                    raise
                reasons.append(f"{label}: {error.message}")
                errors.append(error)
                if len(candidates) > 1:
                    log.warning("%s failed: %s", label, error.message)
                continue
            except BaseException:
                self.breaker.released(key)
                if budget is not None:
                    budget.settle(reservation, None)
                raise
            self.breaker.succeeded(key)
            return _Outcome(
                response=response,
                request=attempt_request,
                provider=candidate.provider,
                attempt_log=attempt_log,
                fallback_from=resolved.provider if index > 0 else None,
                reservation=reservation,
            )
        raise self._nothing_answered(resolved, reasons, errors, attempt_log)

    async def _attempt(
        self,
        name: str,
        provider: Provider,
        request: LLMRequest,
        attempt_log: list[Attempt],
        *,
        probe: bool = False,
    ) -> LLMResponse:
        """One provider's tries: retried as its spec's RetryPolicy says (once only for a
        circuit's probe), each holding a concurrency slot only while the request is in
        flight (not while waiting to retry)."""

        observer = self.observer

        async def once() -> LLMResponse:
            async with self.limits.slot(name):
                if observer is None:
                    return await provider.complete(request)
                started = time.perf_counter()
                outcome = "canceled"  # unless it answers or fails: cancelled, timed out
                try:
                    response = await provider.complete(request)
                    outcome = "ok"
                    return response
                except Exception:
                    outcome = "error"
                    raise
                finally:
                    observer.request_done(
                        name, request.model, request.role, outcome, time.perf_counter() - started
                    )

        policy = retry_policy(self.settings, name)
        if policy is not None:

            def on_retry(attempt: int, error: ProviderError, delay: float) -> None:
                log.warning(
                    "%s/%s attempt %d failed (%s); retrying in %.2fs",
                    name,
                    request.model,
                    attempt,
                    error.message,
                    delay,
                )

            response, _ = await with_retries(
                once,
                max_retries=0 if probe else policy.max_retries,
                base_ms=policy.base_ms,
                factor=policy.factor,
                on_retry=on_retry,
                provider=name,
                model=request.model,
                attempts_log=attempt_log,
            )
            return response
        started = time.perf_counter()
        try:
            response = await once()
        except ProviderError as error:
            attempt_log.append(
                Attempt(
                    1,
                    name,
                    request.model,
                    ok=False,
                    error=error.message,
                    status=_status(error),
                    retryable=error.retryable,
                    latency_ms=(time.perf_counter() - started) * 1000.0,
                )
            )
            raise
        attempt_log.append(
            Attempt(
                1, name, request.model, ok=True, latency_ms=(time.perf_counter() - started) * 1000.0
            )
        )
        return response

    def _nothing_answered(
        self,
        resolved: ResolvedLLM,
        reasons: list[str],
        errors: list[ProviderError],
        attempt_log: list[Attempt],
    ) -> ProviderError:
        """The error of a call nobody answered.

        A single failure of a provider that is not retried here (offline, a test double)
        is returned unchanged, so node retries still apply to it. Otherwise the retries
        are spent: a NoProviderAnsweredError lists every provider's reason.
        """
        retried = any(retry_policy(self.settings, a.provider) is not None for a in attempt_log)
        if len(errors) == 1 and len(reasons) == 1 and not retried:
            return errors[0]
        if len(reasons) == 1 and len(errors) == 1:
            message = errors[0].message
        else:
            message = "no LLM provider could answer: " + "; ".join(reasons)
        return NoProviderAnsweredError(message, provider=resolved.provider, reasons=reasons)

    async def price(
        self, provider: str, requested_model: str | None, response_model: str | None
    ) -> Price | None:
        """The price of a call (pricing.price_for), except that a list price only applies
        to a model the provider's server lists: a compatible server answers under any
        model name it is given, and its calls are not the listed model's calls."""
        price = price_for(self.settings, provider, requested_model, response_model)
        if price is None or not price.source.startswith("table:"):
            return price
        served = await self.served_models(provider)
        return served_price(price, provider, requested_model or response_model, served)

    async def served_models(self, provider: str) -> frozenset[str] | None:
        """The models `provider`'s server lists (cached); None when it cannot tell."""
        if provider in self._served:
            return self._served[provider]
        served: frozenset[str] | None = None
        try:
            lister = getattr(self.providers.get(provider), "list_models", None)
            if lister is not None:
                served = frozenset(await lister(timeout_s=min(10.0, self.settings.llm_timeout_s)))
        except (ProviderError, ConfigError) as error:
            log.warning("cannot read the models %s serves: %s", provider, error.message)
        self._served[provider] = served
        return served

    async def _price(
        self, provider: str, requested_model: str | None, response: LLMResponse
    ) -> tuple[float | None, str | None]:
        """Cost in USD, fixed now, and where the price came from; None when nobody priced
        the model (pricing warns once)."""
        price = await self.price(provider, requested_model, response.model)
        if price is None:
            return None, None
        return cost_usd(price, response.input_tokens, response.output_tokens), price.source


def _status(error: ProviderError) -> int | None:
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None
