"""docs/grafana-dashboard.json: importable, and every query names metrics crew exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")


def _exposed_names() -> set[str]:
    from prometheus_client import REGISTRY

    import crew.observability.metrics  # noqa: F401  (registers the families)

    names = set()
    for collector_names in REGISTRY._names_to_collectors:  # every series name registered
        names.add(collector_names)
    return {n for n in names if n.startswith("crew_")}


def test_dashboard_is_importable_and_queries_existing_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    inputs = dashboard["__inputs"]
    assert any(i["type"] == "datasource" and i["pluginId"] == "prometheus" for i in inputs)
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    exposed = _exposed_names()
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert len(panels) >= 6
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bcrew_[a-z_]+", target["expr"]))
            assert names, (panel["title"], target["expr"])
            unknown = names - exposed
            assert not unknown, (panel["title"], unknown)
            used |= names
    families = {
        "crew_runs_total",
        "crew_runs_in_progress",
        "crew_node_duration_seconds_bucket",
        "crew_llm_request_duration_seconds_bucket",
        "crew_llm_tokens_total",
        "crew_llm_cost_usd_total",
        "crew_http_requests_total",
    }
    assert families <= used, families - used
