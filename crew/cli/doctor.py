"""`crew doctor`: explain, in one screen, what crew will call and whether it can.

Exit 0 when every check passes, 4 when a provider or the database is unreachable or
misconfigured (an invalid setting is exit 2, as for every command).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from crew.cli.common import handle_errors, load_cli_settings, run_async
from crew.domain.errors import UnavailableError

_FIELDS = (
    ("provider", "provider"),
    ("model", "model"),
    ("temperature", "temperature"),
    ("max_tokens", "max_tokens"),
    ("timeout_s", "timeout"),
)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)


@handle_errors
def doctor_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show each role's LLM settings and where they come from; check providers and database."""
    settings = load_cli_settings(ctx)

    async def main() -> dict[str, Any]:
        from crew.llm.diagnose import diagnose

        return await diagnose(settings)

    report = run_async(main)
    if as_json:
        import json

        typer.echo(json.dumps(report, ensure_ascii=False))
    else:
        typer.echo(render(report))
    raise typer.Exit(0 if report["ok"] else UnavailableError.exit_code)


def render(report: dict[str, Any]) -> str:
    """The report as at most about twenty lines of plain text."""
    lines = ["roles (value [where it came from]):"]
    for role in report["roles"]:
        sources = role["sources"]
        parts = []
        for key, label in _FIELDS:
            value = role[key]
            if value is None:
                shown = "(none)"
            elif key == "timeout_s":
                shown = f"{value:g}s"
            else:
                shown = str(value)
            parts.append(f"{label} {shown} [{sources.get(key, 'default')}]")
        lines.append(f"  {role['role']:<10}  " + "  ".join(parts[:2]))
        lines.append(f"  {'':<10}  " + "  ".join(parts[2:]) + _price(role))
    lines.append("providers:")
    for check in report["providers"]:
        lines.append(_check_line(check))
    plugins = report.get("plugins") or []
    if plugins:
        lines.append("plugins:")
        for plugin in plugins:
            lines.append(_check_line({**plugin, "target": f"package {plugin['package']}"}))
    steps = [_fallback_step(step) for step in report["fallback_order"]]
    lines.append(
        "fallback: " + (" -> ".join(steps) if steps else "none (LLM_FALLBACK_ORDER is not set)")
    )
    budget = report["budget"]
    if budget["max_cost_usd"] is not None or budget["max_tokens"] is not None:
        cost = budget["max_cost_usd"]
        lines.append(
            "budget: "
            + ("no cost limit" if cost is None else f"${cost:g}")
            + ", "
            + (
                "no token limit"
                if budget["max_tokens"] is None
                else f"{budget['max_tokens']} tokens"
            )
        )
    lines.append("database:")
    lines.append(_check_line(report["database"]))
    checks = [*report["providers"], *plugins, report["database"]]
    failed = [c["name"] for c in checks if not c["ok"]]
    lines.append(
        "all checks passed" if not failed else f"{len(failed)} problem(s): {', '.join(failed)}"
    )
    return "\n".join(lines)


def _fallback_step(step: dict[str, Any]) -> str:
    name, model = str(step["provider"]), step["model"]
    if model:
        return f"{name}/{model}"
    from crew.llm.registry import needs_model

    if not needs_model(name):
        return name
    return f"{name} (no model: set {name.upper()}_FALLBACK_MODEL)"


def _price(role: dict[str, Any]) -> str:
    source = role.get("price_source")
    if source == "local":
        return ""
    return f"  price {source}" if source else "  price unknown (cost null)"


def _check_line(check: dict[str, Any]) -> str:
    mark = "ok  " if check["ok"] else "FAIL"
    line = f"  {mark} {check['name']:<8} {check['target']}: {check['detail']}"
    for warning in check.get("warnings") or []:
        line += f" (warning: {warning})"
    return line
