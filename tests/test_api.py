"""The API's read side through the ASGI app: auth, headers, lists, filters, errors."""

from __future__ import annotations

import gzip
from datetime import timedelta
from pathlib import Path

import pytest

from tests.api_helpers import KEY, T0, H, api, assert_error, call, repo, seed_run


@pytest.fixture
def client(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    # Reads of seeded rows: no embedded worker may pick the seeded runs up meanwhile.
    with api(db_url, tmp_path, SERVE_EMBEDDED_WORKER="false") as c:
        yield c


def test_health_is_public_and_reports_the_database(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["db"] == "ok" and r.json()["version"]
    assert r.headers["x-request-id"]


def test_health_503_without_driver_message(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://nobody:secret@127.0.0.1:1/nothing"
    with api(url, tmp_path, migrate=False) as c:
        r = c.get("/health")
        assert r.status_code == 503
        assert r.json()["db"] == "unavailable"
        assert "secret" not in r.text and "127.0.0.1" not in r.text and "refused" not in r.text
        assert_error(c.get("/runs", headers=H), 503)


def test_auth_keys_rotation_and_public_paths(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/runs")
    body = assert_error(r, 401, "unauthorized")
    assert "X-API-Key" in body["detail"]
    assert r.headers["www-authenticate"]
    assert_error(client.get("/runs", headers={"X-API-Key": "wrong"}), 401)
    assert client.get("/runs", headers={"X-API-Key": "second-key"}).status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert_error(client.get(f"/runs?api_key={KEY}"), 401)  # query key only for the stream
    assert_error(client.get("/no/such/path"), 401)


def test_request_id_kept_replaced_and_on_errors(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/runs", headers={**H, "X-Request-ID": "abc.DEF_1-2"})
    assert r.headers["x-request-id"] == "abc.DEF_1-2"
    r = client.get("/runs", headers={**H, "X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) > 8
    r = client.get("/nope", headers={**H, "X-Request-ID": "err-1"})
    assert assert_error(r, 404, "not_found")["request_id"] == "err-1"
    assert_error(client.get("/runs", headers={"X-Request-ID": "x" * 129}), 401)


def test_unknown_path_405_and_500_are_json(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.get("/nope", headers=H), 404)
    assert_error(client.delete("/runs", headers=H), 405, "method_not_allowed")

    async def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.crew.reads, "list_runs", boom)
    r = client.get("/runs", headers=H)
    assert_error(r, 500, "internal_error")
    assert "secret internals" not in r.text


def test_runs_filters_order_and_pagination(client) -> None:  # type: ignore[no-untyped-def]
    r = repo(client)
    ids = []
    for i in range(5):
        ids.append(
            call(
                client,
                seed_run,
                r,
                title=f"Alpha {i}" if i % 2 else f"beta_{i}%",
                status="failed" if i == 3 else "completed",
                created=T0 + timedelta(hours=i),
                started=T0 + timedelta(hours=i),
            )
        )
    call(
        client,
        seed_run,
        r,
        title="Queued",
        status="queued",
        created=T0 + timedelta(hours=9),
        started=None,
    )
    page = client.get("/runs", headers=H)
    assert page.json()["total"] == 6 and page.headers["x-total-count"] == "6"
    assert [i["title"] for i in page.json()["items"]][:2] == ["Queued", "beta_4%"]
    item = page.json()["items"][1]
    assert item["nodes"] == {"total": 2, "completed": 2, "failed": 0, "skipped": 0}
    assert item["created_at"].endswith("+00:00")

    def titles(query: str) -> list[str]:
        resp = client.get(f"/runs?{query}", headers=H)
        assert resp.status_code == 200, resp.text
        return [i["title"] for i in resp.json()["items"]]

    assert titles("status=failed") == ["Alpha 3"]
    assert titles("title_contains=ALPHA&order_by=title") == ["Alpha 1", "Alpha 3"]
    assert titles("title_contains=_4%25") == ["beta_4%"]  # LIKE wildcards are literal
    # 13:30+01:00 is 12:30 UTC: the instant, not the wall clock, is compared.
    assert titles(
        "started_from=2026-01-10T13:30:00%2B01:00&started_to=2026-01-10T14:00:00Z"
        "&order_by=started_at"
    ) == ["Alpha 1", "beta_2%"]
    assert titles("order_by=-started_at")[-1] == "Queued"  # nulls last
    assert titles("order_by=started_at")[-1] == "Queued"
    assert titles("order_by=status,-created_at")[0] == "beta_4%"
    assert titles("order_by=-ended_at&limit=1")
    body = assert_error(client.get("/runs?order_by=cost", headers=H), 400)
    assert "created_at" in body["errors"][0] and "started_at" in body["errors"][0]
    for bad in (
        "limit=0",
        "limit=201",
        "offset=-1",
        "limit=x",
        "status=nope",
        "started_from=yesterday",
        "bogus=1",
    ):
        assert_error(client.get(f"/runs?{bad}", headers=H), 400)
    first = client.get("/runs?limit=2", headers=H)
    assert 'rel="next"' in first.headers["link"] and "offset=2" in first.headers["link"]
    middle = client.get("/runs?limit=2&offset=2", headers=H)
    assert 'rel="prev"' in middle.headers["link"] and 'rel="next"' in middle.headers["link"]
    last = client.get("/runs?limit=2&offset=4", headers=H)
    assert 'rel="next"' not in last.headers["link"]
    seen = [
        i["id"]
        for o in (0, 2, 4)
        for i in client.get(f"/runs?limit=2&offset={o}", headers=H).json()["items"]
    ]
    assert sorted(seen) == sorted([*ids, seen[0]]) or len(set(seen)) == 6


def test_ties_are_broken_by_id(client) -> None:  # type: ignore[no-untyped-def]
    r = repo(client)
    ids = sorted(call(client, seed_run, r, run_id=f"tie{i}", title="same") for i in range(4))
    got = [
        i["id"]
        for o in range(4)
        for i in client.get(f"/runs?order_by=title&limit=1&offset={o}", headers=H).json()["items"]
    ]
    assert got == ids
    desc = [i["id"] for i in client.get("/runs?order_by=-title", headers=H).json()["items"]]
    assert desc == ids[::-1]


def test_run_detail_summary_and_time_zone(client) -> None:  # type: ignore[no-untyped-def]
    r = repo(client)
    run_id = call(client, seed_run, r, ended=T0 + timedelta(seconds=3), events=4)
    data = client.get(f"/runs/{run_id}", headers=H).json()
    assert data["summary"] == {
        "nodes_total": 2,
        "nodes_completed": 2,
        "nodes_failed": 0,
        "nodes_skipped": 0,
        "artifacts_total": 0,
        "events_total": 4,
        "duration_ms": 3000.0,
    }
    assert data["request_id"] is None and "error" in data and data["owner"] is None
    paris = client.get(f"/runs/{run_id}", headers={**H, "X-Timezone": "Europe/Paris"}).json()
    assert paris["started_at"] == "2026-01-10T13:00:00+01:00"
    tokyo = client.get("/runs", headers={**H, "X-Timezone": "Asia/Tokyo"}).json()
    assert tokyo["items"][0]["started_at"] == "2026-01-10T21:00:00+09:00"
    ev = client.get(f"/events?run_id={run_id}", headers={**H, "X-Timezone": "Europe/Paris"})
    assert ev.json()["items"][0]["timestamp"] == "2026-01-10T13:00:00+01:00"
    nodes = client.get(f"/runs/{run_id}/nodes", headers={**H, "X-Timezone": "Asia/Tokyo"})
    assert nodes.json()["items"][0]["created_at"].endswith("+09:00")
    for bad in ("Mars/Olympus", "../../etc/passwd", ""):
        assert_error(client.get("/runs", headers={**H, "X-Timezone": bad}), 400)
    assert_error(client.get("/runs/nope", headers=H), 404)
    assert_error(client.get("/runs/nope/summary", headers=H), 404)


def test_a_run_whose_executor_died_shows_its_expired_lease(client) -> None:  # type: ignore[no-untyped-def]
    r = repo(client)
    old = T0 - timedelta(hours=1)
    run_id = call(
        client,
        seed_run,
        r,
        status="running",
        owner="gone:1:x",
        heartbeat_at=old,
        lease_expires_at=old,
    )
    data = client.get(f"/runs/{run_id}", headers=H).json()
    assert data["status"] == "running" and data["owner"] == "gone:1:x"
    assert data["lease"] == "expired" and data["lease_expires_at"].startswith("2026-01-10T11:00")


def test_nodes_and_node(client) -> None:  # type: ignore[no-untyped-def]
    r = repo(client)
    run_id = call(client, seed_run, r, nodes=3)
    page = client.get(f"/runs/{run_id}/nodes", headers=H).json()
    assert [n["key"] for n in page["items"]] == ["n0", "n1", "n2"] and page["total"] == 3
    assert client.get(f"/runs/{run_id}/nodes?key=n1", headers=H).json()["total"] == 1
    assert client.get(f"/runs/{run_id}/nodes?status=failed", headers=H).json()["total"] == 0
    assert client.get(f"/runs/{run_id}/nodes?role=Writer_FR", headers=H).json()["total"] == 3
    assert client.get(f"/runs/{run_id}/nodes?title_contains=node 2", headers=H).json()["total"] == 1
    keys = [
        n["key"]
        for n in client.get(f"/runs/{run_id}/nodes?order_by=-key", headers=H).json()["items"]
    ]
    assert keys == ["n2", "n1", "n0"]
    assert_error(client.get(f"/runs/{run_id}/nodes?order_by=bad", headers=H), 400)
    assert_error(client.get("/runs/nope/nodes", headers=H), 404)
    node = page["items"][0]
    assert client.get(f"/nodes/{node['id']}", headers=H).json()["key"] == "n0"
    assert_error(client.get("/nodes/nope", headers=H), 404)
    assert_error(client.get("/nodes/nope/artifacts", headers=H), 404)


def test_artifacts_preview_download_and_containment(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = repo(client)
    run_id = call(client, seed_run, r)
    node = client.get(f"/runs/{run_id}/nodes", headers=H).json()["items"][0]
    root = tmp_path / "runs"
    (root / run_id).mkdir(parents=True)
    (root / run_id / "a.md").write_text("# Hello\n" + "x" * 3000, encoding="utf-8")
    (tmp_path / "outside.md").write_text("secret", encoding="utf-8")

    async def add(path: str, type_: str, content: str | None) -> str:
        record = await r.add_artifact(
            run_id=run_id,
            node_id=node["id"],
            type=type_,
            path=path,
            content=content,
            summary=None,
            sha256="0" * 64,
            size=10,
        )
        return str(record.id)

    good = call(client, add, f"{run_id}/a.md", "markdown", "# Hello\n" + "x" * 3000)
    escape = call(client, add, "../outside.md", "markdown", None)
    sidecar = call(client, add, f"{run_id}/missing.llm.json", "sidecar", "{}")
    assert client.get(f"/runs/{run_id}/artifacts", headers=H).json()["total"] == 3
    only = client.get(f"/nodes/{node['id']}/artifacts?type=sidecar", headers=H).json()
    assert [a["id"] for a in only["items"]] == [sidecar] and "content" not in only["items"][0]
    detail = client.get(f"/artifacts/{good}", headers=H).json()
    assert detail["preview"].startswith("# Hello") and detail["truncated"] is True
    dl = client.get(f"/artifacts/{good}/download", headers=H)
    assert dl.status_code == 200 and dl.headers["content-type"].startswith("text/markdown")
    assert dl.text.startswith("# Hello")
    assert_error(client.get(f"/artifacts/{escape}/download", headers=H), 404)
    # no file on this machine: the database's copy is served (another worker wrote it)
    from_db = client.get(f"/artifacts/{sidecar}/download", headers=H)
    assert from_db.status_code == 200 and from_db.text == "{}"
    assert from_db.headers["content-type"].startswith("application/json")
    assert "missing.llm.json" in from_db.headers["content-disposition"]
    escape_with_content = call(client, add, "../outside.md", "markdown", "secret")
    assert_error(client.get(f"/artifacts/{escape_with_content}/download", headers=H), 404)
    assert_error(client.get("/artifacts/nope", headers=H), 404)
    assert_error(client.get("/runs/nope/artifacts", headers=H), 404)


def test_events_filters_keyset_and_alias(client) -> None:  # type: ignore[no-untyped-def]
    r = repo(client)
    run_id = call(client, seed_run, r, events=7)

    def get(query: str) -> dict:
        resp = client.get(f"/events?run_id={run_id}&{query}", headers=H)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    everything = get("")
    ids = [e["id"] for e in everything["items"]]
    assert ids == sorted(ids) and everything["total"] == 7
    assert get("type=LLM_CALL")["total"] == 3
    assert get("level=warning")["total"] == 1
    assert get("node_key=n0")["total"] == 3
    assert get("q=NUMBER 4")["total"] == 1
    assert get("ts_from=2026-01-10T13:02:00%2B01:00&ts_to=2026-01-10T12:04:00Z")["total"] == 3
    assert get(f"after_id={ids[4]}")["total"] == 2
    assert [e["id"] for e in get("order_by=-id")["items"]] == ids[::-1]
    first = client.get(f"/events?run_id={run_id}&limit=3", headers=H)
    assert f"after_id={ids[2]}" in first.headers["link"] and first.headers["x-total-count"] == "7"
    alias = client.get(f"/runs/{run_id}/events?limit=3&after_id={ids[2]}", headers=H).json()
    assert [e["id"] for e in alias["items"]] == ids[3:6]
    assert alias["items"][0]["payload"] == {"i": 3}
    assert_error(client.get("/events", headers=H), 400)
    assert_error(client.get("/events?run_id=nope", headers=H), 404)
    assert_error(client.get(f"/events?run_id={run_id}&type=NOPE", headers=H), 400)
    assert_error(client.get(f"/events?run_id={run_id}&after_id=-1", headers=H), 400)


def test_cors_and_gzip(db_url: str, tmp_path: Path) -> None:
    with api(db_url, tmp_path, CORS_ORIGINS="https://app.example") as c:
        for i in range(30):
            call(c, seed_run, repo(c), title=f"run {i}", events=0)
        r = c.get(
            "/runs", headers={**H, "Origin": "https://app.example", "Accept-Encoding": "gzip"}
        )
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        exposed = r.headers["access-control-expose-headers"].lower()
        assert {"x-request-id", "x-total-count", "link"} <= set(exposed.replace(" ", "").split(","))
        assert r.headers["content-encoding"] == "gzip"
        pre = c.options(
            "/runs",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        )
        assert pre.status_code == 200
        assert_error(c.get("/runs", headers={"Origin": "https://app.example"}), 401)
        assert gzip  # the client decompressed it


def test_openapi_lists_every_route(client) -> None:  # type: ignore[no-untyped-def]
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    from crew.api.spec import ENDPOINTS

    assert routes == {(e.method, e.path) for e in ENDPOINTS}
    assert len(routes) == 20  # DELETE /runs/{run_id} and GET /workers included
