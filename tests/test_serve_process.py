"""`crew serve` as a real process: start a run with POST /tasks, follow it over SSE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.api_server import free_port, wait_until_serving

KEY = "process-key"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"API_KEY", "DATABASE_URL"}}
    env.update({"RUNS_ROOT": str(tmp_path / "runs"), "NO_COLOR": "1", **extra})
    return env


@pytest.mark.slow
def test_serve_runs_a_task_followed_over_sse(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crew", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(tmp_path, API_KEY=KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, f"{base}/health")
        headers = {"X-API-Key": KEY}
        body = {"title": "Demo", "task_spec": {"type": "demo"}}
        r = httpx.post(f"{base}/tasks", json=body, headers=headers, timeout=10)
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        events = []
        url = f"{base}/events/stream?run_id={run_id}&api_key={KEY}"
        with httpx.stream("GET", url, timeout=20) as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    events.append(line[7:])
                elif line.startswith("data: "):
                    assert json.loads(line[6:])["run_id"] == run_id
        assert events[0] == "RUN_STARTED" and events[-1] == "RUN_COMPLETED"
        run = httpx.get(f"{base}/runs/{run_id}", headers=headers, timeout=5).json()
        assert run["status"] == "completed"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode in (0, -signal.SIGTERM), output  # a clean shutdown
    assert "POST /tasks 202" in output and "request_id=" in output  # the access log


def test_serve_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crew", "serve"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "API_KEY" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "crew", "serve", "--insecure-no-auth", "--host", "0.0.0.0"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "loopback" in result.stderr
