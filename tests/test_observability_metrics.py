"""Prometheus metrics of `crew serve`: families, route templates, bounded labels, off = free,
promtool, and several workers merged into one exposition."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_helpers import H, api, wait_status
from tests.api_server import free_port, wait_until_serving

PLAN = {
    "title": "Metrics plan",
    "plan": [
        {"id": "research", "title": "Collect sources", "suggested_agent_role": "Researcher"},
        {
            "id": "poem",
            "title": "Write a poem",
            "suggested_agent_role": "Poet_Custom",
            "deps": ["research"],
            "llm": {"provider": "offline", "model": "client-chosen-model"},
        },
    ],
}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        v for n, lab, v in found if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


def label_values(found: list[tuple[str, dict[str, str], float]], name: str, label: str) -> set:
    return {lab[label] for n, lab, _ in found if n == name and label in lab}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The /metrics text after a run started through the API and a few other requests."""
    tmp_path = tmp_path_factory.mktemp("metrics")
    url = f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}"
    with api(url, tmp_path, METRICS_ENABLED=1, NODE_RETRIES=0) as client:
        r = client.post("/tasks", json={"title": "Metrics", "task_spec": PLAN}, headers=H)
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        assert wait_status(client, run_id, {"completed", "failed"})["status"] == "completed"
        assert client.get(f"/runs/{run_id}", headers=H).status_code == 200
        assert client.get("/runs/some-id-that-is-not-there", headers=H).status_code == 404
        assert client.get("/no/such/path/123", headers=H).status_code == 404
        assert client.get("/runs").status_code == 401  # refused before routing
        deadline = time.monotonic() + 5
        while True:  # the run's last metrics are recorded right after its status changes
            text = client.get("/metrics").text
            if value(samples(text), "crew_runs_total", status="completed") >= 1:
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text


def test_http_metrics_use_route_templates(scraped: str) -> None:
    found = samples(scraped)
    routes = label_values(found, "crew_http_requests_total", "route")
    assert "/runs/{run_id}" in routes and "/tasks" in routes
    assert "unmatched" in routes
    assert not any("no/such" in r or "some-id" in r for r in routes), routes
    total = "crew_http_requests_total"
    assert value(found, total, method="GET", route="/runs/{run_id}", status="200") >= 1
    assert value(found, total, method="GET", route="/runs/{run_id}", status="404") >= 1
    assert value(found, total, method="POST", route="/tasks", status="202") >= 1
    assert value(found, total, method="GET", route="unmatched", status="404") >= 1
    assert value(found, total, method="GET", route="/runs", status="401") >= 1
    count = "crew_http_request_duration_seconds_count"
    assert value(found, count, method="POST", route="/tasks") >= 1


def test_run_node_and_llm_metrics_after_an_api_run(scraped: str) -> None:
    found = samples(scraped)
    assert value(found, "crew_runs_total", status="completed") >= 1
    assert value(found, "crew_run_duration_seconds_count", status="completed") >= 1
    assert value(found, "crew_runs_in_progress") == 0
    assert value(found, "crew_nodes_total", status="completed", role="Researcher") >= 1
    assert value(found, "crew_node_duration_seconds_count", role="Researcher") >= 1
    llm = "crew_llm_requests_total"
    assert value(found, llm, provider="offline", model="default", role="Researcher", outcome="ok")
    assert value(found, "crew_llm_request_duration_seconds_count", provider="offline") >= 2
    assert value(found, "crew_llm_tokens_total", provider="offline", type="input") > 0
    assert value(found, "crew_llm_tokens_total", provider="offline", type="output") > 0
    names = {n for n, _, _ in found}
    assert "crew_budget_exceeded_total" in names
    for status in ("completed", "failed", "canceled", "interrupted"):  # present from the start
        assert any(n == "crew_runs_total" and lab == {"status": status} for n, lab, _ in found)


def test_labels_are_bounded(scraped: str) -> None:
    found = samples(scraped)
    assert "Poet_Custom" not in scraped and "client-chosen-model" not in scraped
    assert value(found, "crew_nodes_total", status="completed", role="other") >= 1
    assert "other" in label_values(found, "crew_llm_requests_total", "model")


def test_bounded_label_rules() -> None:
    from crew.agents.roles import BUILTIN_ROLES
    from crew.observability.metrics import ModelLabels, RoleLabels, provider_label

    role_label = RoleLabels(BUILTIN_ROLES)
    from crew.settings import settings_from_values

    settings = settings_from_values(
        {
            "LLM_DEFAULT_MODEL": "gpt-4o-mini",
            "EXECUTOR_MODEL": "llama3.1:8b",
            "OPENAI_PRICE_PROMPT_GPT_4_1_PER_1K": "0.002",
        }
    )
    model = ModelLabels(settings)
    assert model("gpt-4o-mini") == "gpt-4o-mini" and model("llama3.1:8b") == "llama3.1:8b"
    assert model("gpt-4.1") == "gpt-4.1"  # priced, so configured
    assert model("anything-a-client-sent") == "other" and model(None) == "default"
    assert role_label("Writer_FR") == "Writer_FR" and role_label("Writer_Legal") == "other"
    assert role_label(None) == "other"
    assert provider_label("ollama") == "ollama" and provider_label("scripted") == "other"


def test_promtool_accepts_the_exposition(scraped: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=scraped, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


OFF_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient
    from crew.api.app import create_app
    from crew.settings import settings_from_values

    settings = settings_from_values(
        {"API_KEY": "k", "RUNS_ROOT": sys.argv[1], "DATABASE_URL": sys.argv[2]}
    )
    with TestClient(create_app(settings)) as client:
        metrics = client.get("/metrics")
        r = client.post("/tasks", json={"title": "x", "task_spec": {"type": "demo"}},
                        headers={"X-API-Key": "k"})
        run_id = r.json()["run_id"]
        import time
        for _ in range(200):
            if client.get(f"/runs/{run_id}", headers={"X-API-Key": "k"}).json()["status"] \\
                    == "completed":
                break
            time.sleep(0.05)
        app = client.app
        middleware = [m.kwargs for m in app.user_middleware if "observe" in m.kwargs][0]
    print(json.dumps({
        "status": metrics.status_code,
        "body": metrics.json(),
        "prometheus": sorted(m for m in sys.modules if m.startswith("prometheus_client")),
        "sentry": sorted(m for m in sys.modules if m.startswith("sentry_sdk")),
        "observe": middleware["observe"] is None and middleware["report_error"] is None,
    }))
    """
)


def test_metrics_off_costs_nothing(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"METRICS_ENABLED", "SENTRY_DSN", "PROMETHEUS_MULTIPROC_DIR"}
    }
    url = f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}"
    result = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT, str(tmp_path / "runs"), url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == 404 and outcome["body"]["code"] == "not_found"
    assert "METRICS_ENABLED" in outcome["body"]["detail"]
    assert outcome["prometheus"] == [] and outcome["sentry"] == []
    assert outcome["observe"] is True


@pytest.mark.slow
def test_several_workers_share_one_exposition(tmp_path: Path) -> None:
    """`crew serve --workers 2`: each worker counts in its own files, any scrape sums them."""
    port = free_port()
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    (prom_dir / "counter_1.db").write_bytes(b"stale")  # an earlier server's file: removed
    env = {
        k: v for k, v in os.environ.items() if k not in {"API_KEY", "DATABASE_URL", "SENTRY_DSN"}
    }
    env.update(
        {
            "API_KEY": "k",
            "RUNS_ROOT": str(tmp_path / "runs"),
            "METRICS_ENABLED": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
            "LOG_LEVEL": "WARNING",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "crew", "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, f"{base}/metrics")
        made = 0
        deadline = time.monotonic() + 8
        while True:  # until both workers have answered some (the kernel spreads connections)
            for _ in range(10):
                assert httpx.get(f"{base}/openapi.json", timeout=5).status_code == 200
                made += 1
            pids = {p.name.split("_")[-1] for p in prom_dir.glob("counter_*.db")}
            if len(pids) >= 2 or time.monotonic() > deadline:
                break
        assert len(pids) >= 2, f"only one worker answered: {pids}"
        found = samples(httpx.get(f"{base}/metrics", timeout=5).text)
        got = value(found, "crew_http_requests_total", route="/openapi.json", status="200")
        assert got == made
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert not (prom_dir / "counter_1.db").exists(), output
