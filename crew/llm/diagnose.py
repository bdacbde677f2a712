"""`crew doctor`'s checks: what each role will use, and whether it can be reached.

A misconfigured provider usually shows up mid-run, after the supervisor already spent
money; these checks answer beforehand, in one screen: the resolved settings of every
role with where each value came from, one line per provider actually in use (a role's,
or one listed in LLM_FALLBACK_ORDER), the installed provider plugins (one that failed to
load is a failing check), and the database. Each failure says what to do.
Nothing here sends a chat request: listing models proves a server is up and the key is
accepted without spending tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from crew.domain.errors import ConfigError, CrewError
from crew.domain.plan import LLMSpec
from crew.llm.fallback import fallback_model
from crew.llm.plugins import ProviderSpec
from crew.llm.pricing import is_served
from crew.llm.registry import (
    ProviderRegistry,
    plugin_failures,
    plugins,
    price_for,
    provider_spec,
)
from crew.llm.resolution import resolve_llm
from crew.settings import ROLE_NAMES, Settings

CHECK_TIMEOUT_S = 5.0
"""How long one provider or the database may take to answer a check."""


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    target: str
    """What was checked: a URL (no credentials), `built in`, a database URL (no password)."""
    detail: str
    warnings: list[str] = field(default_factory=list)
    served: list[str] | None = None
    """The models the server lists (None: not read); used for prices, not reported."""

    def to_dict(self) -> dict[str, Any]:
        report = asdict(self)
        report.pop("served")
        return report


def role_report(
    settings: Settings, cli: Mapping[str, LLMSpec | None] | None = None
) -> list[dict[str, Any]]:
    """Each role's resolved provider/model/temperature/max_tokens/timeout and sources."""
    report = []
    for kind in ROLE_NAMES:
        resolved = resolve_llm(settings, kind, (cli or {}).get(kind))
        price = price_for(settings, resolved.provider, resolved.model, None, warn=False)
        report.append(
            {
                "role": kind,
                "provider": resolved.provider,
                "model": resolved.model,
                "temperature": resolved.temperature,
                "max_tokens": resolved.max_tokens,
                "timeout_s": resolved.timeout_s,
                "sources": dict(resolved.sources),
                "price_source": price.source if price is not None else None,
            }
        )
    return report


def wanted_models(settings: Settings, roles: list[dict[str, Any]]) -> dict[str, list[str | None]]:
    """Provider -> the models crew may ask it for (None: a role names no model)."""
    wanted: dict[str, list[str | None]] = {}
    for role in roles:
        models = wanted.setdefault(role["provider"], [])
        if role["model"] not in models:
            models.append(role["model"])
    for name in settings.llm_fallback_order:
        models = wanted.setdefault(name, [])
        model = fallback_model(settings, name)
        if model is not None and model not in models:
            models.append(model)
    return wanted


async def check_provider(settings: Settings, name: str, models: list[str | None]) -> Check:
    if name not in ("offline", "ollama", "openai"):
        return await check_plugin(settings, name, models)
    if name == "offline":
        return Check(name, True, "built in", "always available (deterministic, no network)")
    from crew.domain.errors import ProviderError

    provider: Any
    if name == "ollama":
        from crew.llm.ollama import OllamaProvider

        provider = OllamaProvider(settings.ollama_base_url, max_connections=1)
    else:
        from crew.llm.openai import OpenAIProvider

        provider = OpenAIProvider(
            settings.openai_base_url, settings.openai_api_key, max_connections=1
        )
    from crew.llm.http import display_url

    target = display_url(provider.base_url)
    try:
        try:
            available = await provider.list_models(timeout_s=CHECK_TIMEOUT_S)
        except ProviderError as error:
            return Check(name, False, target, error.message)
    finally:
        await provider.aclose()
    problems: list[str] = []
    warnings: list[str] = []
    if None in models:
        problems.append(
            f"a role uses {name} without a model: set LLM_DEFAULT_MODEL or <ROLE>_MODEL"
        )
    for model in (m for m in models if m is not None):
        if name == "ollama" and not _ollama_has(model, available):
            problems.append(f'model "{model}" is not pulled: run `ollama pull {model}`')
        elif name == "openai" and not is_served(model, frozenset(available)):
            # A compatible server may answer under any name it is asked for, with the
            # model it has: the calls would not be that model's, nor cost its price.
            shown = ", ".join(available[:5]) + (", …" if len(available) > 5 else "")
            problems.append(
                f'the server does not serve model "{model}" (it lists: {shown or "nothing"}); '
                "its calls would be answered by another model and get no list price: use a "
                "listed model (LLM_DEFAULT_MODEL, <ROLE>_MODEL)"
            )
    if problems:
        return Check(name, False, target, "; ".join(problems), warnings, available)
    what = "key accepted, " if name == "openai" and settings.openai_api_key else ""
    listed = ", ".join(m for m in models if m is not None) or "-"
    return Check(
        name,
        True,
        target,
        f"{what}{len(available)} model(s) available; uses {listed}",
        warnings,
        available,
    )


async def check_plugin(settings: Settings, name: str, models: list[str | None]) -> Check:
    """A plugin's provider: its required settings, then building it, then its own check
    (ProviderSpec.check) or, when it can list models, the models crew will ask for."""
    spec = provider_spec(name)
    registry = ProviderRegistry(settings)
    if spec is None:
        try:
            registry.get(name)  # not registered: says why (a failed load, an unknown name)
        except CrewError as error:
            return Check(name, False, "plugin", error.message)
        return Check(name, False, "plugin", "not a registered provider")
    target = _plugin_target(name)
    try:
        provider = registry.get(name)
    except CrewError as error:
        return Check(name, False, target, error.message)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            detail = await _plugin_detail(settings, spec, provider, models)
    except TimeoutError:
        return Check(name, False, target, "the provider did not answer its check in time")
    except CrewError as error:
        return Check(name, False, target, error.message)
    except Exception as error:  # a plugin's check must not break doctor
        return Check(name, False, target, f"its check failed: {type(error).__name__}: {error}")
    finally:
        await registry.aclose()
    return Check(name, True, target, detail)


async def _plugin_detail(
    settings: Settings, spec: ProviderSpec, provider: Any, models: list[str | None]
) -> str:
    if None in models and spec.needs_model:
        raise ConfigError(
            f"a role uses {spec.name} without a model: set LLM_DEFAULT_MODEL or <ROLE>_MODEL"
        )
    if spec.check is not None:
        return await spec.check(settings, provider, models)
    listed = ", ".join(m for m in models if m is not None) or "-"
    lister = getattr(provider, "list_models", None)
    if lister is None:
        return f"built (it cannot list models, so none were checked); uses {listed}"
    available = list(await lister(timeout_s=CHECK_TIMEOUT_S))
    unserved = [m for m in models if m is not None and not is_served(m, frozenset(available))]
    if unserved:
        raise ConfigError(f"the provider does not list model(s) {', '.join(unserved)}")
    return f"{len(available)} model(s) available; uses {listed}"


def _plugin_target(name: str) -> str:
    plugin = plugins().get(name)
    if plugin is None:
        return "plugin"
    return f"plugin {plugin.package}" + (f" {plugin.version}" if plugin.version else "")


def plugin_report(settings: Settings) -> list[dict[str, Any]]:
    """Every installed provider plugin: loaded (its package, settings) or failed (why)."""
    report: list[dict[str, Any]] = []
    for name, plugin in plugins().items():
        values = plugin.spec.read(settings)
        shown: dict[str, str | None] = {}
        for setting in plugin.spec.settings:
            value = values.get(setting.name)
            shown[setting.name] = "(set)" if setting.secret and value is not None else value
        report.append(
            {
                "name": name,
                "ok": True,
                "package": plugin.package,
                "version": plugin.version,
                "detail": plugin.spec.description or "loaded",
                "settings": shown,
            }
        )
    for failure in plugin_failures():
        report.append(
            {
                "name": failure.name,
                "ok": False,
                "package": failure.package,
                "version": None,
                "detail": f"not loaded: {failure.reason}",
                "settings": {},
            }
        )
    return report


def _ollama_has(model: str, installed: list[str]) -> bool:
    """Ollama treats `name` as `name:latest`."""
    return model in installed or (":" not in model and f"{model}:latest" in installed)


async def check_database(settings: Settings) -> Check:
    """The store's own check (crew/store/health.py), as one line of the report."""
    from crew.store.health import check_database as store_check

    health = await store_check(settings.database_url, timeout_s=CHECK_TIMEOUT_S * 2)
    return Check("database", health.ok, health.where, health.detail)


async def diagnose(
    settings: Settings, cli: Mapping[str, LLMSpec | None] | None = None
) -> dict[str, Any]:
    """Every check, run concurrently; `ok` is True when nothing failed."""
    roles = role_report(settings, cli)
    wanted = wanted_models(settings, roles)
    checks = await asyncio.gather(
        *(check_provider(settings, name, models) for name, models in wanted.items()),
        check_database(settings),
    )
    providers, database = list(checks[:-1]), checks[-1]
    served = {c.name: c.served for c in providers}
    for role in roles:
        source = role["price_source"]
        listed = served.get(role["provider"])
        unserved = listed is None or not is_served(role["model"] or "", frozenset(listed))
        if source and source.startswith("table:") and unserved:
            role["price_source"] = None  # a list price only applies to a served model
    installed = plugin_report(settings)
    return {
        "ok": all(c.ok for c in checks) and all(p["ok"] for p in installed),
        "roles": roles,
        "providers": [c.to_dict() for c in providers],
        "plugins": installed,
        "fallback_order": [
            {"provider": name, "model": fallback_model(settings, name)}
            for name in settings.llm_fallback_order
        ],
        "budget": {
            "max_cost_usd": settings.run_max_cost_usd,
            "max_tokens": settings.run_max_tokens,
        },
        "database": database.to_dict(),
    }
