"""Issue 13, input half: each defect found by hostile input, one test that failed before.

The CLI runs in process (CliRunner) and the API through its ASGI app; the tests that
touch a database run once on SQLite and once on PostgreSQL (`db_url`), because the
defects were differences between the two.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from engine_support import n, plan_dict, setup_cli_env
from typer.testing import CliRunner

from crew.cli.main import app
from crew.domain.errors import InvalidInputError, PlanValidationError
from crew.domain.json_input import decode_json
from crew.domain.limits import (
    MAX_DESCRIPTION,
    MAX_ITEM,
    MAX_MODEL,
    MAX_NODE_TITLE,
    MAX_ROLE,
    MAX_TITLE,
    quote_cut,
)
from crew.domain.plan import parse_plan
from crew.settings import settings_from_values
from crew.store import migrate
from crew.store.database import open_repository
from tests.api_helpers import H, api, assert_error, call, repo, seed_run, wait_status

DEEP = "[" * 100_000 + "]" * 100_000
DONE = {"completed", "failed", "canceled", "interrupted"}
NO_WORKER = {"SERVE_EMBEDDED_WORKER": "false"}
"""For tests that only need answers: no embedded worker to start and stop."""


@pytest.fixture(autouse=True)
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_cli_env(tmp_path, monkeypatch)


@pytest.fixture
def cli_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI's DATABASE_URL on either backend (PostgreSQL migrated first)."""
    if db_url.startswith("postgresql"):
        migrate.upgrade(db_url)
    monkeypatch.setenv("DATABASE_URL", db_url)
    return db_url


def invoke(*args: str, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input)


def run_file(tmp_path: Path, text: str | bytes) -> Result:
    path = tmp_path / "plan.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return invoke("run", "--task-file", str(path), "--json")


def run_count(tmp_path: Path, db_url: str) -> int:
    settings = settings_from_values({"RUNS_ROOT": str(tmp_path / "runs"), "DATABASE_URL": db_url})

    async def count() -> int:
        async with open_repository(settings) as repo:
            return len(await repo.list_runs(limit=1000))

    return asyncio.run(count())


def refused(result: Result, *words: str) -> str:
    """Exit 2 with one short message mentioning every word, and no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output[-2000:])
    err = result.stderr
    assert "Traceback" not in err and "internal error" not in err, err[-2000:]
    assert result.stdout == ""
    for word in words:
        assert word in err, (word, err[-2000:])
    return str(err)


# ---- 1. lone surrogates ---------------------------------------------------------------


def test_1_lone_surrogate_in_a_plan_file_exits_2_naming_the_field(
    tmp_path: Path, cli_db: str
) -> None:
    text = '{"title": "\\ud800", "plan": [{"id": "a", "title": "x"}]}'
    refused(run_file(tmp_path, text), "title", "surrogate")
    text = '{"title": "t", "plan": [{"id": "a", "title": "x", "notes": ["ok", "\\udfff"]}]}'
    refused(run_file(tmp_path, text), "plan[0].notes[1]", "surrogate")
    # Encoded as UTF-8 bytes (not as an escape) it is not even valid UTF-8.
    refused(run_file(tmp_path, b'{"title": "\xed\xa0\x80", "plan": []}'), "UTF-8")
    assert run_count(tmp_path, cli_db) == 0


def test_1_lone_surrogate_in_a_built_plan_is_refused() -> None:
    # Plans that never were JSON (a supervisor's, a test's) meet the same check.
    with pytest.raises(PlanValidationError, match="surrogate"):
        parse_plan(plan_dict(n("a", suggested_agent_role="Writer\ud800")))


# ---- 2. deep nesting -------------------------------------------------------------------


def test_2_deeply_nested_plan_file_and_stdin_exit_2(tmp_path: Path) -> None:
    refused(run_file(tmp_path, DEEP), "nested")
    refused(invoke("run", "--task-file", "-", "--json", input=DEEP), "stdin", "nested")
    # Within what the decoder can read, but deeper than a plan ever needs.
    inner = "[" * 40 + "]" * 40
    text = f'{{"title": "t", "plan": [{{"id": "a", "title": "x", "notes": {inner}}}]}}'
    refused(run_file(tmp_path, text), "nested more than 32 levels")


# ---- 3. NUL and control characters -----------------------------------------------------

NUL_FIELDS: dict[str, Any] = {
    "plan title": {"title": "T\u0000"},
    "description": {"description": "d\u0000"},
    "goal acceptance": {"acceptance": ["ok", "a\u0000"]},
    "node title": {"node": {"title": "x\u0000"}},
    "node acceptance": {"node": {"acceptance": ["\u0000"]}},
    "role": {"node": {"suggested_agent_role": "Writer\u0000"}},
    "risks": {"node": {"risks": "r\u0000"}},
    "assumptions": {"node": {"assumptions": ["a\u0000"]}},
    "notes": {"node": {"notes": ["n\u0000"]}},
    "model": {"node": {"llm": {"model": "m\u0000"}}},
    "unknown field": {"node": {"extra": "\u0000"}},
}


def hostile_plan(change: dict[str, Any]) -> dict[str, Any]:
    plan: dict[str, Any] = {"title": "T", "plan": [{"id": "a", "title": "x"}]}
    node = change.get("node", {})
    plan.update({k: v for k, v in change.items() if k != "node"})
    plan["plan"][0].update(node)
    return plan


@pytest.mark.parametrize("field", sorted(NUL_FIELDS))
def test_3_nul_in_any_string_exits_2_on_both_databases(
    tmp_path: Path, cli_db: str, field: str
) -> None:
    result = run_file(tmp_path, json.dumps(hostile_plan(NUL_FIELDS[field])))
    refused(result, "NUL")
    assert run_count(tmp_path, cli_db) == 0  # refused before any row is written


@pytest.mark.parametrize("char", ["\u0000", "\u001b", "\u0007", "\u007f", "\u009b"])
def test_3_control_characters_are_refused_in_built_plans(char: str) -> None:
    for change in NUL_FIELDS.values():
        raw = json.dumps(hostile_plan(change)).replace("\\u0000", json.dumps(char)[1:-1])
        if "extra" in raw:
            continue  # unknown fields are dropped, not stored
        with pytest.raises(PlanValidationError, match=f"U\\+{ord(char):04X}"):
            parse_plan(json.loads(raw))


def test_3_tab_and_line_breaks_stay_accepted() -> None:
    plan = parse_plan(plan_dict(n("a", acceptance=["line one\nline two\r\n\tindented"])))
    assert plan.nodes[0].acceptance == ("line one\nline two\r\n\tindented",)


# ---- 4. length limits ------------------------------------------------------------------

LIMITS = {
    "plan title": ({"title": "t"}, MAX_TITLE),
    "description": ({"description": "d"}, MAX_DESCRIPTION),
    "node title": ({"node": {"title": "t"}}, MAX_NODE_TITLE),
    "role": ({"node": {"suggested_agent_role": "r"}}, MAX_ROLE),
    "acceptance item": ({"node": {"acceptance": ["a"]}}, MAX_ITEM),
    "note": ({"node": {"notes": "n"}}, MAX_ITEM),
    "model": ({"node": {"llm": {"model": "m"}}}, MAX_MODEL),
}


def _sized(change: dict[str, Any], size: int) -> dict[str, Any]:
    def grow(value: Any) -> Any:
        if isinstance(value, str):
            return value * size
        if isinstance(value, list):
            return [grow(v) for v in value]
        return {k: grow(v) for k, v in value.items()}

    return hostile_plan(grow(change))


@pytest.mark.parametrize("field", sorted(LIMITS))
def test_4_every_string_field_has_its_limit(field: str) -> None:
    change, limit = LIMITS[field]
    parse_plan(_sized(change, limit))
    with pytest.raises(PlanValidationError, match=f"too long: {limit + 1:,} characters"):
        parse_plan(_sized(change, limit + 1))


def test_4_long_role_exits_2_and_longest_strings_run_on_both_databases(
    tmp_path: Path, cli_db: str
) -> None:
    refused(run_file(tmp_path, json.dumps(_sized(LIMITS["role"][0], MAX_ROLE + 1))), "too long")
    assert run_count(tmp_path, cli_db) == 0
    longest = hostile_plan({})
    for change, limit in LIMITS.values():
        sized = _sized(change, limit)
        longest.update({k: v for k, v in sized.items() if k != "plan"})
        longest["plan"][0].update(sized["plan"][0])
    longest["plan"][0]["llm"]["model"] = "offline"  # a model the offline provider answers
    result = run_file(tmp_path, json.dumps(longest))
    assert result.exit_code == 0, result.output[-2000:]
    assert json.loads(result.stdout)["status"] == "completed"


# ---- 5. non-finite numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    "llm",
    [
        '{"temperature": NaN}',
        '{"timeout_s": Infinity}',
        '{"temperature": -Infinity}',
        '{"timeout_s": 1e400}',
        '{"max_tokens": 1' + "0" * 30 + "}",
    ],
)
def test_5_non_finite_and_huge_numbers_exit_2(tmp_path: Path, llm: str) -> None:
    text = f'{{"title": "t", "plan": [{{"id": "a", "title": "x", "llm": {llm}}}]}}'
    result = run_file(tmp_path, text)
    refused(result)
    assert any(word in result.stderr for word in ("NaN", "Infinity", "infinity", "range"))


def test_5_non_finite_numbers_in_built_plans_are_refused() -> None:
    for value in (float("nan"), float("inf"), float("-inf")):
        for field in ("temperature", "timeout_s"):
            with pytest.raises(PlanValidationError, match="finite"):
                parse_plan(plan_dict(n("a", llm={field: value})))


# ---- 10. refusals quote a cut value ----------------------------------------------------


def test_10_a_huge_id_is_quoted_cut(tmp_path: Path) -> None:
    huge = "x/" * 500_000
    err = refused(run_file(tmp_path, json.dumps(plan_dict(n(huge)))), "invalid id")
    assert len(err) < 2_000 and "1,000,000 characters" in err
    err = refused(invoke("run", "--task-file", "-", "--run-id", huge, input="{}"), "run id")
    assert len(err) < 5_000
    err = refused(run_file(tmp_path, json.dumps(plan_dict(n("a", huge)))), "unknown dependency")
    assert len(err) < 2_000


def test_10_thousands_of_problems_are_counted_not_listed(tmp_path: Path) -> None:
    nodes = [n(f"../{i}") for i in range(5_000)]
    err = refused(run_file(tmp_path, json.dumps(plan_dict(*nodes))), "more problems")
    assert len(err) < 20_000


def test_10_quote_cut_shows_short_values_whole_and_counts_long_ones() -> None:
    assert quote_cut("abc") == "'abc'"
    assert quote_cut("a" * 1000, 10) == "'aaaaaaaaaa'… (1,000 characters)"
    assert len(quote_cut(list(range(100_000)))) < 200


def test_duplicate_keys_are_refused_naming_the_key(tmp_path: Path) -> None:
    text = '{"title": "t", "plan": [{"id": "a", "title": "x", "id": "b"}]}'
    refused(run_file(tmp_path, text), "duplicate key 'id'")
    with pytest.raises(InvalidInputError, match="duplicate key 'a'"):
        decode_json('{"a": 1, "a": 1}', "the body")


# ---- the same defects through POST /tasks (ASGI app, both databases) ------------------


def _post(client: Any, body: str | bytes) -> Any:
    return client.post("/tasks", headers={**H, "Content-Type": "application/json"}, content=body)


def _api_runs(client: Any) -> int:
    return len(call(client, repo(client).list_runs, limit=1000))


API_BODIES = {
    "surrogate title": ('{"title": "\\ud800", "task": {"type": "demo"}}', "title", "surrogate"),
    "surrogate in plan": (
        '{"task": {"title": "t", "plan": [{"id": "a", "title": "\\udc00"}]}}',
        "task.plan[0].title",
        "surrogate",
    ),
    "deep body": ("[" * 100_000 + "]" * 100_000, "nested", ""),
    "deep plan": ('{"task": ' + "[" * 50 + "]" * 50 + "}", "nested", ""),
    "nul acceptance": (
        '{"task": {"title": "t", "plan": [{"id": "a", "title": "x", "acceptance": "\\u0000"}]}}',
        "acceptance",
        "NUL",
    ),
    "nul role": (
        json.dumps(hostile_plan({"node": {"suggested_agent_role": "W\u0000"}})),
        "suggested_agent_role",
        "NUL",
    ),
    "nul body description": (
        '{"description": "\\u0000", "task": {"type": "demo"}}',
        "description",
        "NUL",
    ),
    "escape in goal": (
        '{"title": "\\u001b[2J", "options": {"use_supervisor": true}}',
        "title",
        "U+001B",
    ),
    "long role": (
        json.dumps({"task": _sized(LIMITS["role"][0], MAX_ROLE + 1)}),
        "suggested_agent_role",
        "too long",
    ),
    "long model option": (
        json.dumps(
            {"task": {"type": "demo"}, "options": {"llm": {"executor": {"model": "m" * 201}}}}
        ),
        "options.llm.executor.model",
        "too long",
    ),
    "nan temperature": (
        '{"task": {"title": "t", "plan": [{"id": "a", "title": "x", '
        '"llm": {"temperature": NaN}}]}}',
        "NaN",
        "",
    ),
    "infinite budget": (
        '{"task": {"type": "demo"}, "options": {"max_cost_usd": Infinity}}',
        "Infinity",
        "",
    ),
    "overflowing budget": (
        '{"task": {"type": "demo"}, "options": {"max_cost_usd": 1e999}}',
        "infinity",
        "",
    ),
    "duplicate key": (
        '{"task": {"type": "demo"}, "task": {"type": "demo"}}',
        "duplicate key 'task'",
        "",
    ),
}


def test_1_to_5_hostile_bodies_are_400s_naming_the_field(db_url: str, tmp_path: Path) -> None:
    with api(db_url, tmp_path, **NO_WORKER) as client:
        for case, (body, *words) in sorted(API_BODIES.items()):
            answer = assert_error(_post(client, body), 400)
            text = json.dumps(answer, ensure_ascii=False)
            assert all(word in text for word in words if word), (case, words, text[:2000])
        assert _api_runs(client) == 0


def test_4_longest_strings_run_through_the_api_on_both_databases(
    db_url: str, tmp_path: Path
) -> None:
    longest = _sized(LIMITS["role"][0], MAX_ROLE)
    longest["plan"][0]["title"] = "t" * MAX_NODE_TITLE
    longest["title"] = "T" * MAX_TITLE
    longest["plan"][0]["acceptance"] = ["a" * MAX_ITEM] * 3
    with api(db_url, tmp_path) as client:
        r = client.post("/tasks", headers=H, json={"task": longest})
        assert r.status_code == 202, r.text
        assert wait_status(client, r.json()["run_id"], DONE)["status"] == "completed"


def test_10_api_refusals_quote_cut_values(sqlite_url: str, tmp_path: Path) -> None:
    huge = "k" * 500_000
    with api(sqlite_url, tmp_path, **NO_WORKER) as client:
        for body in (
            {"task": plan_dict(n(huge))},
            {huge: 1, "task": {"type": "demo"}},
            {"task": {"type": "demo"}, "options": {"llm": {huge: {}}}},
        ):
            r = client.post("/tasks", headers=H, json=body)
            assert_error(r, 400)
            assert len(r.content) < 5_000, len(r.content)
        r = client.get("/runs/" + "r" * 60_000, headers=H)
        assert_error(r, 404)
        assert len(r.content) < 1_000
        r = client.get("/runs?limit=" + "9" * 4_000, headers=H)
        assert_error(r, 400)
        assert len(r.content) < 1_000


# ---- 11. OpenAPI accuracy and 405 first ------------------------------------------------


def test_11_openapi_declares_time_zones_and_the_one_plan_source_rule() -> None:
    from zoneinfo import available_timezones

    from crew.api.openapi import document
    from crew.api.routes import load

    load()

    doc = document()
    zone = doc["components"]["schemas"]["TimeZone"]
    assert set(zone["enum"]) == available_timezones() and "Europe/Paris" in zone["enum"]
    for item in doc["paths"].values():
        for operation in item.values():
            if operation.get("security") == []:
                continue  # public: no X-Timezone
            header = [p for p in operation["parameters"] if p["name"] == "X-Timezone"]
            assert header and header[0]["schema"] == {"$ref": "#/components/schemas/TimeZone"}
    task = doc["components"]["schemas"]["TaskRequest"]
    sources = [frozenset(s["required"]) for s in task["oneOf"]]
    assert sources == [{"task"}, {"task_spec"}, {"task_file"}, {"options"}]
    assert task["oneOf"][3]["properties"]["options"]["properties"]["use_supervisor"] == {
        "const": True
    }


def test_11_openapi_one_plan_source_matches_the_server(sqlite_url: str, tmp_path: Path) -> None:
    from jsonschema_rs import Draft202012Validator

    from crew.api.openapi import document
    from crew.api.routes import load

    load()

    validator = Draft202012Validator(document()["components"]["schemas"]["TaskRequest"])
    bodies = [
        {"task": {"type": "demo"}},
        {"task_spec": {"type": "demo"}},
        {"title": "Goal", "options": {"use_supervisor": True}},
        {"task": {"type": "demo"}, "task_spec": {"type": "demo"}},
        {"task": {"type": "demo"}, "options": {"use_supervisor": True}},
        {"title": "nothing to run"},
        {"title": "nothing", "options": {"use_supervisor": False}},
    ]
    with api(sqlite_url, tmp_path, **NO_WORKER) as client:
        for body in bodies:
            declared_valid = validator.is_valid(body)
            status = client.post("/tasks", headers=H, json=body).status_code
            assert (status == 202) == declared_valid, (body, status)


def test_11_an_undeclared_method_is_405_whatever_the_headers(
    sqlite_url: str, tmp_path: Path
) -> None:
    bad = [
        {},
        {"X-API-Key": "wrong"},
        {"X-Timezone": "Mars/Olympus_Mons"},
        {"X-API-Key": "wrong", "X-Timezone": "nowhere", "Content-Length": "99999999999"},
    ]
    with api(sqlite_url, tmp_path, **NO_WORKER) as client:
        cases = [
            (method, path, headers)
            for method in ("PATCH", "PUT", "TRACE")
            for path in ("/runs", "/tasks", "/runs/some-id", "/artifacts/x/download", "/health")
            for headers in bad
        ]
        for method, path, headers in cases:
            r = client.request(method, path, headers=headers)
            assert_error(r, 405, "method_not_allowed")
            assert method not in r.headers["allow"] and r.headers["allow"]
        # A declared method with a bad header is still judged by its headers.
        assert_error(client.get("/runs", headers={**H, "X-Timezone": "nowhere"}), 400)
        assert_error(client.get("/runs", headers={"X-API-Key": "wrong"}), 401)


# ---- 12. artifact paths that cannot be a file under RUNS_ROOT --------------------------


def test_12_an_artifact_path_with_a_nul_is_a_404(sqlite_url: str, tmp_path: Path) -> None:
    with api(sqlite_url, tmp_path, **NO_WORKER) as client:
        r = repo(client)
        run_id = call(client, seed_run, r, nodes=1, events=0)
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        (tmp_path / "runs" / run_id / "ok.md").write_text("fine", encoding="utf-8")
        ids = {}
        for name, path in {
            "ok": f"{run_id}/ok.md",
            "nul": f"{run_id}/ok.md\u0000.txt",
            "long": f"{run_id}/" + "n" * 5_000,
            "deep long": "/".join(["d" * 200] * 40),
        }.items():
            record = call(
                client,
                r.add_artifact,
                run_id=run_id,
                node_id=None,
                type="markdown",
                path=path,
                content=None,  # no database copy: the file under RUNS_ROOT is served
                summary=None,
                sha256="0" * 64,
                size=1,
            )
            ids[name] = record.id
        assert client.get(f"/artifacts/{ids['ok']}/download", headers=H).text == "fine"
        for name in ("nul", "long", "deep long"):
            assert_error(client.get(f"/artifacts/{ids[name]}/download", headers=H), 404)


def test_12_file_under_refuses_every_way_out(tmp_path: Path) -> None:
    from crew.api.routes.artifacts import file_under

    root = tmp_path / "runs"
    (root / "r").mkdir(parents=True)
    (root / "r" / "a.md").write_text("a", encoding="utf-8")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret", encoding="utf-8")
    (root / "r" / "out.md").symlink_to(outside)
    (root / "r" / "loop").symlink_to(root / "r" / "loop")
    (root / "r" / "in.md").symlink_to(root / "r" / "a.md")
    assert file_under(root, "r/a.md") == (root / "r" / "a.md").resolve()
    assert file_under(root, "r/in.md") == (root / "r" / "a.md").resolve()
    for bad in (
        "", "r", ".", "..", "../secret.txt", "r/../../secret.txt", str(outside), "r/out.md",
        "r/loop", "r/a.md\u0000", "r/" + "x" * 300, "r/" + "x/" * 3000, "r/\udcff",
    ):  # fmt: skip
        assert file_under(root, bad) is None, bad


def test_3_a_nul_in_an_id_or_a_filter_is_a_4xx_on_both_databases(
    db_url: str, tmp_path: Path
) -> None:
    with api(db_url, tmp_path, **NO_WORKER) as client:
        for path in ("/runs/%00", "/nodes/a%00b", "/artifacts/%00/download", "/runs/%00/events"):
            assert_error(client.get(path, headers=H), 404)
        for query in ("/runs?status=%00", "/events?run_id=%00", "/runs/x/artifacts?type=a%00"):
            assert_error(client.get(query, headers=H), 400)
        assert_error(client.get("/runs/%00"), 401)  # the key is still checked first


def test_10_a_huge_run_id_argument_is_quoted_cut(tmp_path: Path) -> None:
    huge = "r" * 1_000_000
    for args in (("runs", "show", huge), ("run", "--resume", huge), ("events", "tail", huge)):
        result = invoke(*args)
        assert result.exit_code == 2, (args[:2], result.exit_code, result.output[-500:])
        assert 0 < len(result.stderr) < 5_000, (args[:2], len(result.stderr))


def test_4_goal_options_have_the_same_limits(tmp_path: Path) -> None:
    refused(invoke("plan", "--title", "t" * (MAX_TITLE + 1)), "--title", "too long")
    refused(invoke("plan", "--title", "\x1b[2Jgoal"), "--title", "U+001B")
    refused(invoke("plan", "--title", "goal", "--acceptance", "a" * (MAX_ITEM + 1)), "too long")
    args = ["run", "--use-supervisor", "--title", "goal", "--description", "d\x07"]
    refused(invoke(*args), "--description", "U+0007")


def test_4_plan_size_and_node_count_are_bounded(tmp_path: Path) -> None:
    from crew.domain.limits import MAX_NODES, MAX_PLAN_BYTES

    nodes = [{"id": f"n{i}", "title": "t"} for i in range(MAX_NODES + 1)]
    refused(run_file(tmp_path, json.dumps({"title": "t", "plan": nodes})), "at most 10,000")
    padding = " " * (MAX_PLAN_BYTES + 1)
    refused(run_file(tmp_path, '{"title": "t", "plan": []}' + padding), "too large")
