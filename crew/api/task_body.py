"""Validation of the `POST /tasks` body (the prototype's shape), collecting every problem.

Whatever a client sends, the outcome is a TaskRequest or an ApiError 400 with the list
of problems; nothing in here can turn a bad body into a 500.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crew.api.errors import ApiError
from crew.api.params import KEY_PATTERN
from crew.domain.errors import InvalidInputError, PlanValidationError
from crew.domain.json_input import decode_json
from crew.domain.limits import (
    MAX_DESCRIPTION,
    MAX_ITEM,
    MAX_ITEMS,
    MAX_MODEL,
    MAX_PLAN_BYTES,
    MAX_TITLE,
    check_text,
    quote_cut,
)
from crew.domain.plan import Plan, parse_plan
from crew.domain.providers import PROVIDER_NAMES
from crew.domain.vocabulary import DEFAULT_TITLE, REQUEST_ROLE_KINDS
from crew.settings import Settings

BODY_KEYS = (
    "title",
    "task",
    "task_spec",
    "task_file",
    "options",
    "request_id",
    "description",
    "acceptance",
)
OPTION_KEYS = (
    "dry_run",
    "override",
    "use_supervisor",
    "llm",
    "max_cost_usd",
    "max_tokens",
    "description",
    "acceptance",
    "resume",
)
LLM_ROLES = REQUEST_ROLE_KINDS


def demo_plan(title: str | None) -> Plan:
    """The prototype's `{"type": "demo"}`: one writer node, done in seconds offline."""
    return parse_plan(
        {
            "title": title or "Demo",
            "plan": [
                {
                    "id": "demo",
                    "title": "Write a short demo note",
                    "type": "task",
                    "suggested_agent_role": "Writer_FR",
                    "acceptance": ["a few sentences"],
                }
            ],
        }
    )


@dataclass(slots=True)
class TaskRequest:
    title: str
    plan: Plan | None
    """None with use_supervisor: the supervisor plans from title/description/acceptance."""
    description: str | None = None
    acceptance: tuple[str, ...] = ()
    request_id: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    """RunOptions fields set by the request."""


def parse_task_request(
    body: bytes, settings: Settings, available: set[str] | frozenset[str]
) -> TaskRequest:
    try:
        data = decode_json(body, "the body") if body.strip() else None
    except InvalidInputError as error:
        raise ApiError.invalid(error.message, error.problems or [error.message]) from None
    if not isinstance(data, dict):
        raise ApiError.invalid("the body must be a JSON object")
    problems: list[str] = []
    for key in sorted(set(data) - set(BODY_KEYS)):
        problems.append(f"unknown field {quote_cut(key)} (accepted: {', '.join(BODY_KEYS)})")

    title = data.get("title")
    if title is not None and (
        not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE
    ):
        problems.append(f"title: expected a non-empty string of at most {MAX_TITLE} characters")
        title = None
    elif title is not None and not check_text(title, "title", MAX_TITLE, problems):
        title = None
    request_id = data.get("request_id")
    if request_id is not None and (
        not isinstance(request_id, str) or not KEY_PATTERN.match(request_id)
    ):
        problems.append("request_id: expected 1 to 128 characters among A-Z a-z 0-9 . _ -")
        request_id = None

    options = data.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        problems.append("options: expected an object")
        options = {}
    changes = _options(options, problems, available)
    use_supervisor = bool(changes.get("use_supervisor"))

    description = _text(data, options, "description", problems)
    acceptance = _acceptance(data, options, problems)

    sources = [name for name in ("task", "task_spec", "task_file") if data.get(name) is not None]
    if use_supervisor:
        sources.append("options.use_supervisor")
    if len(sources) != 1:
        given = ", ".join(sources) if sources else "none"
        problems.append(
            "give exactly one plan source: task or task_spec (an inline plan, or "
            '{"type": "demo"}), task_file (a file in TASKS_DIR), or options.use_supervisor '
            f"(the supervisor plans from title/description/acceptance); given: {given}"
        )
    plan: Plan | None = None
    if len(sources) == 1 and not use_supervisor and not problems:
        plan = _plan(data, sources[0], title, settings, problems)
    if plan is not None and changes.get("rerun"):
        problems.append("options.override applies to POST /runs/{run_id}/resume, not new runs")
    if problems:
        raise ApiError.invalid("invalid task request", problems)
    final_title = title.strip() if title else (plan.title if plan else DEFAULT_TITLE)
    if plan is not None and title:
        plan = Plan(final_title, plan.nodes, plan.description, plan.acceptance)
    return TaskRequest(
        title=final_title,
        plan=plan,
        description=description,
        acceptance=acceptance,
        request_id=request_id,
        changes={k: v for k, v in changes.items() if k != "rerun"},
    )


def _plan(
    data: dict[str, Any], source: str, title: str | None, settings: Settings, problems: list[str]
) -> Plan | None:
    value = data[source]
    if source == "task_file":
        value = _read_task_file(value, settings, problems)
        if value is None:
            return None
    if not isinstance(value, dict):
        problems.append(f"{source}: expected a plan object (the plan file format)")
        return None
    if value.get("type") == "demo" and "plan" not in value:
        return demo_plan(title)
    try:
        return parse_plan(value, default_title=title or DEFAULT_TITLE)
    except PlanValidationError as error:
        problems.extend(f"{source}: {p}" for p in (error.problems or [error.message]))
        return None


def _read_task_file(name: Any, settings: Settings, problems: list[str]) -> Any:
    if settings.tasks_dir is None:
        problems.append(
            "task_file is disabled on this server: reading server files on a client's behalf "
            "needs TASKS_DIR (a folder of plan files); send the plan inline as task instead"
        )
        return None
    if not isinstance(name, str) or not name or len(name) > 1024 or "\x00" in name:
        problems.append("task_file: expected a file name inside TASKS_DIR")
        return None
    root = Path(settings.tasks_dir).resolve()
    try:
        # The resolved real path, so `..`, absolute names and symlinks cannot leave TASKS_DIR.
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise FileNotFoundError(name)
        with path.open("rb") as file:
            raw = file.read(MAX_PLAN_BYTES + 1)
    except (OSError, ValueError, RuntimeError):
        problems.append(f"task_file: {quote_cut(name)} is not a file inside TASKS_DIR")
        return None
    if len(raw) > MAX_PLAN_BYTES:
        problems.append(f"task_file: {quote_cut(name)} is larger than {MAX_PLAN_BYTES} bytes")
        return None
    try:
        return decode_json(raw, f"task_file {quote_cut(name)}")
    except InvalidInputError as error:
        problems.extend([error.message, *error.problems])
        return None


def _options(
    options: dict[str, Any], problems: list[str], available: set[str] | frozenset[str]
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for key in sorted(set(options) - set(OPTION_KEYS)):
        problems.append(
            f"options: unknown field {quote_cut(key)} (accepted: {', '.join(OPTION_KEYS)})"
        )
    for key in ("dry_run", "use_supervisor"):
        value = options.get(key)
        if value is not None and not isinstance(value, bool):
            problems.append(f"options.{key}: expected true or false")
        elif value is not None:
            changes[key] = value
    if options.get("resume") not in (None, False):
        problems.append("options.resume: resume a run with POST /runs/{run_id}/resume")
    override = options.get("override")
    if isinstance(override, str):
        override = [override]
    if override is not None:
        if (
            not isinstance(override, list)
            or len(override) > MAX_ITEMS
            or not all(isinstance(k, str) and len(k) <= 64 for k in override)
        ):
            problems.append(f"options.override: expected a list of node keys (at most {MAX_ITEMS})")
        else:
            changes["rerun"] = tuple(override)
    cost = options.get("max_cost_usd")
    if cost is not None:
        if (
            isinstance(cost, bool)
            or not isinstance(cost, int | float)
            or not math.isfinite(cost)
            or not cost >= 0
        ):
            problems.append("options.max_cost_usd: expected a number >= 0")
        else:
            changes["max_cost_usd"] = float(cost)
    tokens = options.get("max_tokens")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            problems.append("options.max_tokens: expected an integer >= 1")
        else:
            changes["max_tokens"] = tokens
    llm = options.get("llm")
    if llm is not None:
        parsed = _llm(llm, problems, available)
        if parsed:
            changes["llm"] = parsed
    return changes


def _llm(
    llm: Any, problems: list[str], available: set[str] | frozenset[str]
) -> dict[str, dict[str, Any]]:
    if not isinstance(llm, dict):
        problems.append("options.llm: expected an object keyed by supervisor, manager, executor")
        return {}
    result: dict[str, dict[str, Any]] = {}
    for role, spec in llm.items():
        where = f"options.llm.{role}"
        if role not in LLM_ROLES:
            problems.append(
                f"options.llm: unknown role {quote_cut(role)} (accepted: {', '.join(LLM_ROLES)})"
            )
            continue
        if not isinstance(spec, dict) or set(spec) - {"provider", "model"}:
            problems.append(f"{where}: expected an object with provider and/or model")
            continue
        provider, model = spec.get("provider"), spec.get("model")
        if provider is not None:
            if not isinstance(provider, str) or provider not in PROVIDER_NAMES:
                problems.append(
                    f"{where}.provider: unknown provider {quote_cut(provider)} "
                    f"(accepted: {', '.join(PROVIDER_NAMES)})"
                )
                continue
            if provider not in available:
                problems.append(
                    f"{where}.provider: {provider!r} is not available on this server "
                    f"(available: {', '.join(sorted(available))})"
                )
                continue
        if model is not None and (not isinstance(model, str) or not model):
            problems.append(f"{where}.model: expected a model name")
            continue
        if model is not None and not check_text(model, f"{where}.model", MAX_MODEL, problems):
            continue
        entry = {k: v for k, v in (("provider", provider), ("model", model)) if v is not None}
        if entry:
            result[role] = entry
    return result


def _text(data: dict[str, Any], options: dict[str, Any], name: str, problems: list[str]) -> Any:
    value = data.get(name, options.get(name))
    if value is not None and not isinstance(value, str):
        problems.append(f"{name}: expected a string")
        return None
    if value is not None and not check_text(value, name, MAX_DESCRIPTION, problems):
        return None
    return value


def _acceptance(
    data: dict[str, Any], options: dict[str, Any], problems: list[str]
) -> tuple[str, ...]:
    value = data.get("acceptance", options.get("acceptance"))
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append("acceptance: expected a list of strings")
        return ()
    if len(value) > MAX_ITEMS:
        problems.append(f"acceptance: {len(value)} items (at most {MAX_ITEMS})")
        return ()
    before = len(problems)
    for index, item in enumerate(value):
        check_text(item, f"acceptance item {index + 1}", MAX_ITEM, problems)
    return tuple(value) if len(problems) == before else ()
