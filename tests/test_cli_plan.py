"""`crew plan` through the CLI runner, and once as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from crew.cli.main import app
from crew.cli.render import mermaid_escape
from crew.domain.plan import NodeType, parse_plan

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ENV_PREFIXES = ("LLM_", "SUPERVISOR_", "CREW_", "MAX_CONCURRENCY", "OFFLINE_")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder (no ./.env) with no crew variables from the caller."""
    for name in list(os.environ):
        if name.startswith(CLEAN_ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def test_json_prints_a_valid_plan_file() -> None:
    result = invoke("plan", "--title", "Rapport 80p", "-a", "80 pages", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    plan = parse_plan(data)
    assert plan.title == "Rapport 80p"
    assert plan.acceptance == ("80 pages",)
    assert {n.type for n in plan.nodes} == set(NodeType)
    assert "plan:" in result.stderr  # progress goes to stderr


def test_format_json_equals_json_flag() -> None:
    one = invoke("plan", "--title", "Rapport 80p", "--json").stdout
    two = invoke("plan", "--title", "Rapport 80p", "--format", "json").stdout
    assert one == two


def test_out_writes_the_file_and_says_where(isolated: Path) -> None:
    target = isolated / "plan.json"
    result = invoke("plan", "--title", "Rapport 80p", "--out", str(target), "--format", "tree")
    assert result.exit_code == 0, result.output
    plan = parse_plan(json.loads(target.read_text(encoding="utf-8")))
    assert plan.title == "Rapport 80p"
    assert str(target) in result.stderr
    assert "Rapport 80p" in result.stdout  # the tree
    assert not list(isolated.glob(".plan.json.*"))  # no temporary file left


def test_out_into_missing_folder_exits_2(isolated: Path) -> None:
    result = invoke("plan", "--title", "X", "--out", str(isolated / "nope" / "p.json"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_table_output() -> None:
    result = invoke("plan", "--title", "Rapport 80p")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in ("id", "type", "role", "deps", "manage", "synthesis", "Manager_Generic"):
        assert expected in out
    assert "\x1b[" not in out  # no colour when stdout is not a terminal


def test_mermaid_output() -> None:
    result = invoke("plan", "--title", 'Rapport "80p" [final]', "--format", "mermaid")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "flowchart TD"
    assert any("-->" in line for line in lines)
    assert '"80p"' not in result.stdout and "[final]" not in result.stdout
    assert "#quot;80p#quot;" in result.stdout and "#91;final#93;" in result.stdout


def test_mermaid_escape() -> None:
    assert (
        mermaid_escape('a "b" [c]\n{d} <e> #')
        == "a #quot;b#quot; #91;c#93; #123;d#125; #lt;e#gt; #35;"
    )


def test_english_titles_with_language_env() -> None:
    result = invoke("plan", "--title", "Report", "--json", env={"CREW_LANGUAGE": "en"})
    assert result.exit_code == 0, result.output
    titles = [n["title"] for n in json.loads(result.stdout)["plan"]]
    assert any("synthesis" in t.lower() for t in titles)


def test_missing_env_file_exits_2(isolated: Path) -> None:
    result = invoke("--env-file", str(isolated / "missing.env"), "plan", "--title", "X")
    assert result.exit_code == 2
    assert "missing.env" in result.stderr
    assert "Traceback" not in result.output


def test_env_file_is_read(isolated: Path) -> None:
    env_file = isolated / "custom.env"
    env_file.write_text("SUPERVISOR_MAX_ATTEMPTS=zero\n", encoding="utf-8")
    result = invoke("--env-file", str(env_file), "plan", "--title", "X")
    assert result.exit_code == 2
    assert "SUPERVISOR_MAX_ATTEMPTS" in result.stderr


def test_bad_max_concurrency_exits_2_naming_the_variable() -> None:
    result = invoke("plan", "--title", "X", env={"MAX_CONCURRENCY": "abc"})
    assert result.exit_code == 2
    assert "MAX_CONCURRENCY" in result.stderr
    assert "Traceback" not in result.output


def test_unknown_default_provider_exits_2() -> None:
    result = invoke("plan", "--title", "X", env={"LLM_DEFAULT_PROVIDER": "foo"})
    assert result.exit_code == 2
    assert "LLM_DEFAULT_PROVIDER" in result.stderr
    assert "offline" in result.stderr  # the accepted values are named


def test_unknown_supervisor_provider_flag_exits_2() -> None:
    result = invoke("plan", "--title", "X", "--supervisor-provider", "foo")
    assert result.exit_code == 2
    assert "SUPERVISOR_PROVIDER" in result.stderr


def test_help_shows_env_vars() -> None:
    result = invoke("plan", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("SUPERVISOR_PROVIDER", "SUPERVISOR_MODEL", "CREW_LANGUAGE"):
        assert name in result.stdout


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEAN_ENV_PREFIXES)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_real_process_prints_a_valid_plan(isolated: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "crew", "plan", "--title", "Rapport 80p", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_subprocess_env(),
        cwd=isolated,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    plan = parse_plan(json.loads(completed.stdout))
    assert plan.title == "Rapport 80p"
    assert "Traceback" not in completed.stderr


@pytest.mark.slow
def test_cli_import_does_not_load_heavy_libraries(isolated: Path) -> None:
    code = (
        "import sys, crew.cli.main, crew.cli.plan, crew.cli.render\n"
        "heavy = ('sqlalchemy', 'sqlmodel', 'starlette', 'uvicorn', 'httpx', 'alembic',\n"
        "         'prometheus_client', 'sentry_sdk')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=_subprocess_env(),
        cwd=isolated,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == ""


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--title", "  "], "--title"),
        (["--title", "X", "--acceptance", "ok", "--acceptance", ""], "--acceptance"),
    ],
)
def test_blank_goal_options_exit_2(isolated: Path, args: list[str], named: str) -> None:
    result = invoke("plan", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and named in result.stderr
