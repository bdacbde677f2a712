"""One error hierarchy for the whole product.

Every error a user can cause or meet carries the process exit code (DESIGN §2) and the
HTTP status it maps to, so the CLI and the API translate failures the same way and
nobody has to map exception classes by hand in two places.
"""

from __future__ import annotations

from collections.abc import Sequence

from crew.domain.limits import MAX_MESSAGE_CHARS, MAX_PROBLEM_CHARS, MAX_PROBLEMS, cut


class CrewError(Exception):
    """Base class: a failure with a message meant for a human, not a traceback."""

    exit_code: int = 1
    http_status: int = 500
    code: str = "error"

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        # Bounded here, whoever raised it: a message quoting a huge input (a 1 MB id, a
        # plan with thousands of bad nodes) must not flood a terminal or a response.
        message = cut(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.problems: list[str] = bounded_problems(problems)

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {p}" for p in self.problems)


def bounded_problems(problems: Sequence[str]) -> list[str]:
    """At most MAX_PROBLEMS problems of at most MAX_PROBLEM_CHARS each; the rest counted."""
    shown = [cut(p, MAX_PROBLEM_CHARS) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        shown.append(f"… and {len(problems) - MAX_PROBLEMS:,} more problems")
    return shown


class InvalidInputError(CrewError):
    """Bad usage or invalid input (flags, config, plan, request body): exit 2 / HTTP 400."""

    exit_code = 2
    http_status = 400
    code = "invalid_input"


class ConfigError(InvalidInputError):
    """A setting has a value crew cannot use."""

    code = "invalid_config"


class PlanValidationError(InvalidInputError):
    """A plan was rejected; `problems` lists every reason, each naming its node."""

    code = "invalid_plan"


class NotFoundError(InvalidInputError):
    """An id (run, node, artifact) names nothing: exit 2 on the CLI, 404 on the API."""

    http_status = 404
    code = "not_found"


class AmbiguousIdError(InvalidInputError):
    """A prefix matches more than one id."""

    code = "ambiguous_id"


class ConflictError(InvalidInputError):
    """The request clashes with current state (a taken run id, a run already executing)."""

    http_status = 409
    code = "conflict"


class LeaseLostError(ConflictError):
    """This process no longer holds the run's lease: another executor took it over.

    Raised by a fenced write; nothing of the transaction that raised it was committed.
    """


class RunFailedError(CrewError):
    """A run ended with at least one failed node: exit 1."""

    exit_code = 1
    http_status = 500
    code = "run_failed"


class BudgetExceededError(CrewError):
    """The run's cost or token budget would be exceeded: exit 3."""

    exit_code = 3
    http_status = 402
    code = "budget_exceeded"


class UnavailableError(CrewError):
    """A dependency (LLM provider, database) is unreachable or misconfigured: exit 4 / 503."""

    exit_code = 4
    http_status = 503
    code = "unavailable"


class ProviderError(UnavailableError):
    """An LLM provider call failed.

    `retryable` says whether trying again may help (timeouts, connection errors, rate
    limits, 5xx); invalid requests and rejected keys are not retryable.
    """

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class NoProviderAnsweredError(ProviderError):
    """Every provider that could answer a call failed (after retries and fallback).

    The message lists each provider's reason. It is not retryable: the LLM client has
    already retried and fallen back, and doing it all again would only multiply waits.
    """

    code = "provider_unavailable"

    def __init__(self, message: str, *, provider: str, reasons: Sequence[str] = ()) -> None:
        super().__init__(message, provider=provider, retryable=False)
        self.reasons: list[str] = list(reasons)


class DatabaseUnavailableError(UnavailableError):
    """The database cannot be reached."""

    code = "database_unavailable"


class MigrationRequiredError(UnavailableError):
    """The database schema is behind the code's migrations."""

    code = "migration_required"


class InterruptedRunError(CrewError):
    """The process was interrupted (Ctrl-C, SIGTERM); the run is resumable: exit 130."""

    exit_code = 130
    http_status = 503
    code = "interrupted"
