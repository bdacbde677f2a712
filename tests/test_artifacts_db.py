"""The database is the truth for every file: restore on resume, export, download, limits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from engine_support import Store, harness, n, plan_dict, setup_cli_env
from typer.testing import CliRunner

from crew.cli.main import app


async def test_every_artifact_row_holds_its_file_exactly(tmp_path: Path, db_url: str) -> None:
    plan = plan_dict(n("m", type="manage"), n("a", "m"), n("b", "a"))
    async with harness(tmp_path, db_url) as h:
        outcome = await h.run(plan)
        assert outcome.status == "completed"
        artifacts = await h.repo.list_artifacts(run_id=outcome.run_id)
        assert {a.type for a in artifacts} >= {"markdown", "sidecar", "manager", "summary"}
        for artifact in artifacts:
            assert artifact.content is not None, artifact.path
            data = artifact.content.encode("utf-8")
            assert hashlib.sha256(data).hexdigest() == artifact.sha256, artifact.path
            assert (h.runs_root / artifact.path).read_bytes() == data, artifact.path


async def test_a_resume_restores_missing_and_changed_files(tmp_path: Path, db_url: str) -> None:
    plan = plan_dict(n("a"), n("b", "a"), n("c", "b"))
    async with harness(tmp_path, db_url) as h:
        outcome = await h.run(plan)
        run_id = outcome.run_id
        folder = h.runs_root / run_id
        original = (folder / "nodes/a/artifact_a.md").read_bytes()
        (folder / "nodes/a/artifact_a.md").unlink()
        (folder / "nodes/b/artifact_b.md").write_text("edited by hand\n", encoding="utf-8")
        (folder / "plan.json").unlink()
        calls = h.provider.calls

        await h.repo.update_run(run_id, status="failed")  # something to resume
        resumed = await h.resume(run_id)
        assert resumed.status == "completed"
        assert h.provider.calls == calls  # restored from the database, nothing re-run
        assert (folder / "nodes/a/artifact_a.md").read_bytes() == original
        assert "edited by hand" not in (folder / "nodes/b/artifact_b.md").read_text("utf-8")
        assert json.loads((folder / "plan.json").read_text("utf-8"))["title"]


async def test_a_run_continues_on_a_machine_with_an_empty_runs_root(
    tmp_path: Path, db_url: str
) -> None:
    """Another machine (its own RUNS_ROOT) continues the run: the dependencies' outputs
    come from the database, and the completed nodes' files are written there too."""
    plan = plan_dict(n("a"), n("b", "a"))
    async with harness(tmp_path, db_url) as h:
        first = await h.run(plan)
        assert first.status == "completed"
        elsewhere = dataclasses.replace(h.settings, runs_root=tmp_path / "elsewhere")
        from crew.engine.service import run_summary

        # an API machine without the files still counts the calls, from the database
        seen = await run_summary(h.repo, elsewhere, first.run_id)
        assert seen["providers"] == {"offline": 2} and seen["fallback_calls"] == 0
        await h.repo.update_run(first.run_id, status="interrupted")
        calls = h.provider.calls
        from crew.engine.service import execute_run

        outcome = await execute_run(h.repo, elsewhere, h.client, first.run_id, resume=True)
        assert outcome.status == "completed" and h.provider.calls == calls
        for key in ("a", "b"):
            path = tmp_path / "elsewhere" / first.run_id / f"nodes/{key}/artifact_{key}.md"
            assert path.is_file()


async def test_an_output_over_the_limit_fails_its_node(tmp_path: Path, sqlite_url: str) -> None:
    async with harness(tmp_path, sqlite_url, ARTIFACT_MAX_BYTES="64") as h:
        outcome = await h.run(plan_dict(n("a"), n("b", "a")))
        assert outcome.status == "failed"
        nodes = {node.key: node for node in await h.repo.list_nodes(outcome.run_id)}
        assert nodes["a"].status == "failed"
        assert "ARTIFACT_MAX_BYTES" in (nodes["a"].error or "")
        assert nodes["b"].status == "skipped"
        assert not (h.runs_root / outcome.run_id / "nodes/a/artifact_a.md").exists()


def test_export_writes_the_whole_folder_from_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_cli_env(tmp_path, monkeypatch)
    runner = CliRunner()
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan_dict(n("a"), n("b", "a"))), encoding="utf-8")
    ran = runner.invoke(app, ["run", "--task-file", str(plan_file), "--run-id", "exp-1"])
    assert ran.exit_code == 0, ran.output
    shutil.rmtree(tmp_path / "runs")  # the executing machine's files are gone

    exported = runner.invoke(app, ["runs", "export", "exp", str(tmp_path / "out"), "--json"])
    assert exported.exit_code == 0, exported.output
    result = json.loads(exported.stdout)
    assert result["run_id"] == "exp-1" and result["without_content"] == []
    folder = tmp_path / "out" / "exp-1"
    artifacts = Store(tmp_path).call(lambda repo: repo.list_artifacts(run_id="exp-1"))
    for artifact in artifacts:
        data = (tmp_path / "out" / artifact.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == artifact.sha256
    assert (folder / "plan.json").is_file() and (folder / "summary.json").is_file()

    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x", encoding="utf-8")
    refused = runner.invoke(app, ["runs", "export", "exp-1", str(not_a_dir)])
    assert refused.exit_code == 2 and "not a directory" in refused.stderr
