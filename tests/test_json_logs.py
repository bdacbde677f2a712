"""`crew run` with LOG_FORMAT=json: stderr holds only JSON lines, the run's progress events
and the engine's own log lines alike, each naming its run and node; stdout keeps the one
summary object. Through the real CLI, in a subprocess, so the streams are the real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from llm_servers import refused_url

pytestmark = pytest.mark.slow

FIELDS = {"ts", "level", "logger", "msg", "run_id", "node_key"}
PLAN = {
    "title": "Rapport",
    "plan": [
        {"id": "a", "title": "Alpha"},
        {"id": "b", "title": "Beta", "deps": ["a"], "llm": {"provider": "ollama", "model": "m"}},
    ],
}


def _crew(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN), encoding="utf-8")
    keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "PYTHONPATH"}}
    environment = {
        **keep,
        "RUNS_ROOT": str(tmp_path / "runs"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}",
        "OLLAMA_BASE_URL": refused_url(),
        "RETRY_BASE_DELAY": "0",
        "NODE_RETRIES": "0",
        "OPENAI_BACKOFF_BASE_MS": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "crew", "run", "--task-file", str(plan), *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line on stderr: {line!r}") from None
    return parsed


def test_progress_events_and_engine_logs_are_json_lines(tmp_path: Path) -> None:
    result = _crew(tmp_path, "--json", LOG_FORMAT="json")
    assert result.returncode == 4, result.stderr  # node b's provider is unreachable
    summary = json.loads(result.stdout)
    run_id = summary["run_id"]
    lines = _json_lines(result.stderr)
    assert lines, "no JSON line at all"
    for line in lines:
        assert set(line) >= FIELDS, line
        assert line["run_id"] == run_id, line
        assert line["ts"].endswith("+00:00")

    events = [line for line in lines if line["logger"] == "crew.events"]
    kinds = [(line["event"], line["node_key"]) for line in events]
    assert kinds[:3] == [("RUN_STARTED", None), ("PLAN_CREATED", None), ("NODE_STARTED", "a")]
    assert ("NODE_COMPLETED", "a") in kinds and ("NODE_FAILED", "b") in kinds
    assert kinds[-1] == ("RUN_FAILED", None)
    ids = [line["event_id"] for line in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    failed = next(line for line in events if line["event"] == "NODE_FAILED")
    assert failed["level"] == "ERROR" and "node b failed" in failed["msg"]

    engine = [line for line in lines if line["logger"] != "crew.events"]
    assert engine, "the engine's own log lines are missing"
    warning = next(line for line in engine if line["level"] == "WARNING")
    assert warning["logger"].startswith("crew.") and warning["node_key"] == "b"
    assert "not reachable" in warning["msg"]


def test_text_format_keeps_the_plain_progress_lines(tmp_path: Path) -> None:
    result = _crew(tmp_path, "--json")
    assert result.returncode == 4, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert any("RUN_STARTED" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)


def test_quiet_json_run_writes_only_the_logs(tmp_path: Path) -> None:
    result = _crew(tmp_path, "--json", "-q", LOG_FORMAT="json")
    assert result.returncode == 4, result.stderr
    lines = _json_lines(result.stderr)
    assert not [line for line in lines if line["logger"] == "crew.events"]
    assert {line["logger"] for line in lines} <= {"crew.llm", "crew.engine"}
