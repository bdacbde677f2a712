"""`crew run` through the CLI runner: inputs, `--json`, exit codes, dry run, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from engine_support import (
    Store,
    calls_by_node,
    keyed,
    n,
    offline_text,
    plan_dict,
    setup_cli_env,
    use_provider,
)
from fakes import ScriptedProvider, unavailable
from typer.testing import CliRunner

from crew.cli.main import app
from crew.cli.run import normalize_argv

DATA = Path(__file__).parent / "data"
SUMMARY_KEYS = {
    "run_id", "status", "title", "nodes", "artifacts", "final", "input_tokens",
    "output_tokens", "cost_usd", "duration_ms",
}  # fmt: skip
CHAIN = plan_dict(n("a"), n("b", "a"), n("c", "b"), n("d"))


@pytest.fixture(autouse=True)
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_cli_env(tmp_path, monkeypatch)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input)


def write_plan(tmp_path: Path, plan: Any, name: str = "plan.json") -> str:
    path = tmp_path / name
    path.write_text(plan if isinstance(plan, str) else json.dumps(plan), encoding="utf-8")
    return str(path)


def run_json(*args: str, input: str | None = None, code: int = 0) -> dict[str, Any]:
    result = invoke("run", *args, "--json", input=input)
    assert result.exit_code == code, result.output + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# ---- inputs and output ----------------------------------------------------------------


def test_json_summary_shape(tmp_path: Path, store: Store) -> None:
    data = run_json("--task-file", write_plan(tmp_path, CHAIN))
    assert set(data) >= SUMMARY_KEYS
    assert data["status"] == "completed" and data["title"] == "Rapport test"
    assert data["nodes"] == {"total": 4, "completed": 4, "failed": 0, "skipped": 0}
    run_folder = tmp_path / "runs" / data["run_id"]
    assert data["artifacts"] == [str(run_folder / f"nodes/{k}/artifact_{k}.md") for k in "abcd"]
    assert data["final"] == [str(run_folder / f"nodes/{k}/artifact_{k}.md") for k in "cd"]
    assert all(Path(p).is_file() for p in data["artifacts"])
    assert data["input_tokens"] > 0 and data["output_tokens"] > 0
    assert data["cost_usd"] == 0.0
    assert isinstance(data["duration_ms"], int | float) and data["duration_ms"] >= 0
    assert store.run(data["run_id"]).status == "completed"


def test_progress_goes_to_stderr_and_stdout_stays_clean(tmp_path: Path) -> None:
    result = invoke("run", "--task-file", write_plan(tmp_path, CHAIN), "--json")
    assert result.exit_code == 0
    json.loads(result.stdout)  # exactly one JSON object, nothing else
    assert "NODE_COMPLETED" in result.stderr and "RUN_COMPLETED" in result.stderr
    assert "\x1b[" not in result.stderr  # no colour off a terminal

    quiet = invoke("run", "--task-file", write_plan(tmp_path, CHAIN), "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == ""

    human = invoke("run", "--task-file", write_plan(tmp_path, CHAIN))
    assert human.exit_code == 0
    assert "completed: 4/4 nodes completed" in human.stdout
    assert "deliverable:" in human.stdout


def test_failed_run_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_provider(
        monkeypatch, ScriptedProvider(default=keyed({"b": unavailable("400", retryable=False)}))
    )
    data = run_json("--task-file", write_plan(tmp_path, CHAIN), code=1)
    assert data["status"] == "failed"
    assert data["nodes"] == {"total": 4, "completed": 2, "failed": 1, "skipped": 1}
    assert data["final"] == [str(tmp_path / "runs" / data["run_id"] / "nodes/d/artifact_d.md")]


def test_stdin_input(tmp_path: Path) -> None:
    data = run_json("--task-file", "-", input=json.dumps(CHAIN))
    assert data["status"] == "completed" and data["nodes"]["total"] == 4


def test_the_prototype_plan_file_runs_unchanged() -> None:
    data = run_json("--task-file", str(DATA / "task_rapport_80p.json"))
    assert data["status"] == "completed"
    assert data["nodes"]["failed"] == data["nodes"]["skipped"] == 0


def test_a_plan_written_by_crew_plan_runs(tmp_path: Path) -> None:
    planned = invoke("plan", "--title", "Rapport 80p", "--json")
    assert planned.exit_code == 0
    data = run_json("--task-file", write_plan(tmp_path, planned.stdout))
    assert data["status"] == "completed" and data["title"] == "Rapport 80p"


def test_use_supervisor_plans_then_runs(tmp_path: Path, store: Store) -> None:
    data = run_json("--use-supervisor", "--title", "Rapport 80p", "--run-id", "sup-1")
    assert data["status"] == "completed" and data["run_id"] == "sup-1"
    assert (tmp_path / "runs/sup-1/supervisor.llm.json").is_file()
    events = store.events("sup-1")
    assert [e.type for e in events[:2]] == ["RUN_STARTED", "PLAN_CREATED"]
    assert events[1].payload["source"] == "supervisor"
    assert any(e.type == "LLM_CALL" and e.payload.get("role") == "Supervisor" for e in events)


# ---- bad input: exit 2, nothing written -----------------------------------------------


def assert_nothing_written(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert not runs.exists() or [p.name for p in runs.iterdir()] in ([], ["crew.db"])
    assert not (tmp_path / "crew.db").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        (plan_dict(n("a", "c"), n("b", "a"), n("c", "b")), "cycle"),
        (plan_dict(n("a", "zz")), "zz"),
        (plan_dict(n("a"), n("a")), "a"),
        (plan_dict(), "empty"),
        (plan_dict(n("../up")), "../up"),
        (plan_dict(n("a", llm={"provider": "nowhere"})), "nowhere"),
    ],
)
def test_invalid_input_exits_2_and_writes_nothing(
    tmp_path: Path, content: Any, message: str
) -> None:
    path = str(tmp_path / "missing.json") if content is None else write_plan(tmp_path, content)
    result = invoke("run", "--task-file", path, "--json")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert_nothing_written(tmp_path)


def test_invalid_plan_after_earlier_runs_adds_no_row(tmp_path: Path, store: Store) -> None:
    first = run_json("--task-file", write_plan(tmp_path, CHAIN))
    cycle = plan_dict(n("a", "b"), n("b", "a"))
    result = invoke("run", "--task-file", write_plan(tmp_path, cycle, "cycle.json"))
    assert result.exit_code == 2
    assert "a" in result.stderr and "b" in result.stderr
    assert store.run_ids() == [first["run_id"]]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [first["run_id"]]


@pytest.mark.parametrize(
    "args",
    [
        ["--task-file", "plan.json", "--use-supervisor"],
        ["--task-file", "plan.json", "--resume", "x"],
        ["--use-supervisor", "--resume", "x"],
        [],
        ["--resume", "x", "--dry-run"],
        ["--task-file", "plan.json", "--override", "a"],
        ["--task-file", "plan.json", "--executor-provider", "nowhere"],
        ["--use-supervisor", "--title", ""],
        ["--use-supervisor", "--title", "   "],
        ["--use-supervisor", "--acceptance", " "],
    ],
)
def test_bad_usage_exits_2(tmp_path: Path, args: list[str]) -> None:
    write_plan(tmp_path, CHAIN)
    result = invoke("run", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("bad", ["a/b", "..", ".hidden", "x" * 65, "spaces here"])
def test_bad_run_id_exits_2_and_writes_nothing(tmp_path: Path, bad: str) -> None:
    result = invoke("run", "--task-file", write_plan(tmp_path, CHAIN), "--run-id", bad)
    assert result.exit_code == 2, result.output
    assert "run id" in result.stderr
    assert_nothing_written(tmp_path)


def test_taken_run_id_exits_2(tmp_path: Path, store: Store) -> None:
    plan = write_plan(tmp_path, CHAIN)
    assert run_json("--task-file", plan, "--run-id", "mine")["run_id"] == "mine"
    calls_before = len(store.events("mine"))
    result = invoke("run", "--task-file", plan, "--run-id", "mine")
    assert result.exit_code == 2
    assert "mine" in result.stderr and "taken" in result.stderr
    assert len(store.events("mine")) == calls_before


def test_unknown_and_ambiguous_run_ids_exit_2(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, CHAIN)
    run_json("--task-file", plan, "--run-id", "abc-1")
    run_json("--task-file", plan, "--run-id", "abc-2")
    unknown = invoke("run", "--resume", "zzz")
    assert unknown.exit_code == 2 and "zzz" in unknown.stderr
    ambiguous = invoke("run", "--resume", "abc")
    assert ambiguous.exit_code == 2
    assert "abc-1" in ambiguous.stderr and "abc-2" in ambiguous.stderr
    assert invoke("run", "--resume", "abc-1", "--override", "nope").exit_code == 2


# ---- dry run --------------------------------------------------------------------------


def test_dry_run_calls_nothing_and_shows_the_preview(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    provider = use_provider(monkeypatch, ScriptedProvider())  # any call would fail the run
    plan = plan_dict(n("m", type="manage"), n("a", "m"), n("r", suggested_agent_role="Reviewer"))
    path = write_plan(tmp_path, plan)
    result = invoke("run", "--task-file", path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run" in result.stderr
    assert "(manager assigns)" in result.stderr and "Reviewer" in result.stderr
    assert "LLM calls that would be made: 3" in result.stderr

    data = run_json("--task-file", path, "--dry-run")
    assert data["status"] == "completed" and data["dry_run"] is True
    assert data["nodes"] == {"total": 3, "completed": 0, "failed": 0, "skipped": 3}
    preview = data["preview"]
    assert [node["key"] for node in preview["nodes"]] == ["m", "a", "r"]
    assert preview["nodes"][0]["provider"] == "offline"
    assert preview["llm_calls"] == 3
    assert provider.calls == 0
    run = store.run(data["run_id"])
    assert run.status == "completed" and run.options["dry_run"] is True
    assert {node.status for node in store.nodes(data["run_id"]).values()} == {"skipped"}
    assert (tmp_path / "runs" / data["run_id"] / "plan.json").is_file()


# ---- resume ---------------------------------------------------------------------------


def test_resume_after_fixing_the_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    use_provider(
        monkeypatch, ScriptedProvider(default=keyed({"b": unavailable("500", retryable=False)}))
    )
    first = run_json("--task-file", write_plan(tmp_path, CHAIN), code=1)
    fixed = use_provider(monkeypatch, ScriptedProvider(default=offline_text))
    data = run_json("--resume", first["run_id"][:8])  # a prefix works
    assert data["status"] == "completed" and data["run_id"] == first["run_id"]
    assert calls_by_node(fixed) == ["b", "c"]
    assert data["nodes"]["completed"] == 4


def test_resume_of_a_completed_run_says_so(tmp_path: Path) -> None:
    first = run_json("--task-file", write_plan(tmp_path, CHAIN))
    result = invoke("run", "--resume", first["run_id"])
    assert result.exit_code == 0
    assert "already completed" in result.stderr
    data = run_json("--resume", first["run_id"])
    assert data["status"] == "completed" and data["nodes"]["completed"] == 4


def test_prototype_resume_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_provider(
        monkeypatch, ScriptedProvider(default=keyed({"c": unavailable("500", retryable=False)}))
    )
    run_json("--task-file", write_plan(tmp_path, CHAIN), "--run-id", "proto", code=1)
    fixed = use_provider(monkeypatch, ScriptedProvider(default=offline_text))
    for argv in (
        ["run", "--run-id", "proto", "--resume", "--json"],
        ["run", "--resume", "--run-id", "proto", "--json"],
    ):
        normalized = normalize_argv(argv)
        assert normalized[-2:] == ["--resume", "proto"]
        result = CliRunner().invoke(app, normalized)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["status"] == "completed"
    assert calls_by_node(fixed) == ["c"]
    plain = ["run", "--task-file", "p.json", "--run-id", "x"]
    assert normalize_argv(plain) == plain


def test_changed_executor_model_on_resume_reruns_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_provider(
        monkeypatch, ScriptedProvider(default=keyed({"c": unavailable("500", retryable=False)}))
    )
    first = run_json("--task-file", write_plan(tmp_path, CHAIN), code=1)
    fixed = use_provider(monkeypatch, ScriptedProvider(default=offline_text))
    data = run_json("--resume", first["run_id"], "--executor-model", "other-model")
    assert data["status"] == "completed"
    assert sorted(calls_by_node(fixed)) == ["a", "b", "c", "d"]
    assert {r.model for r in fixed.requests} == {"other-model"}


def test_progress_whose_reader_went_away_does_not_stop_the_run(
    tmp_path: Path, store: Store
) -> None:
    """`crew run ... 2>&1 | head -1`: progress stops, the run completes, stdout still works."""
    plan = write_plan(tmp_path, plan_dict(*(n(f"n{i}") for i in range(120))))
    command = [sys.executable, "-m", "crew", "run", "--task-file", plan, "--run-id", "piped"]
    with (tmp_path / "out.txt").open("wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.PIPE)
        assert process.stderr is not None
        assert b"RUN_STARTED" in process.stderr.readline()
        process.stderr.close()  # ~600 progress lines: far more than a pipe buffers
        assert process.wait(timeout=60) == 0
    assert store.run("piped").status == "completed"
    assert "run piped completed: 120/120 nodes completed" in (tmp_path / "out.txt").read_text()
