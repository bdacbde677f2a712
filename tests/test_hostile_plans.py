"""Hostile plans and bodies, generated: each is accepted and run, or refused cleanly.

Never a traceback, a 5xx, an exit code other than 0 or 2, a file outside RUNS_ROOT, or a
half-created run (a run row without its folder, or a folder without its row). Inputs:
wrong types, huge and non-finite numbers, huge / unicode / control / NUL / surrogate
strings, deep nesting, cycles of every length, path-like ids, duplicate keys.

Example counts stay modest so the whole suite keeps its time budget; the plan parser runs
in process, the API through its ASGI app on both databases, the CLI in process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from engine_support import setup_cli_env
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from crew.cli.main import app
from crew.domain.errors import InvalidInputError
from crew.domain.json_input import decode_json
from crew.domain.limits import MAX_ITEM, MAX_NODE_TITLE, MAX_ROLE, MAX_TITLE
from crew.domain.plan import NODE_KEY_PATTERN, Plan, parse_plan
from tests.api_helpers import H, api, call, repo, wait_status

DONE = {"completed", "failed", "canceled", "interrupted"}
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
API_EXAMPLES = 40
NO_WORKER = {"SERVE_EMBEDDED_WORKER": "false"}
"""For tests that only need answers: no embedded worker to start and stop."""

# ---- strategies ------------------------------------------------------------------------

NASTY_CHARS = [
    "\x00", "\ud800", "\udfff", "\x1b", "\x07", "\x7f", "\x85", "\x9b", "\u202e", "\u2028",
    "\ufeff", "\uffff", "\t", "\n", "\r", "é", "ß", "İ", "\U0001f600", "/", "\\", ".", '"',
]  # fmt: skip
PATH_LIKE_IDS = [
    ".", "..", "a/b", "../x", "../../etc/passwd", "/etc/passwd", "C:\\x", "a\\b", "-a", "_a",
    ".a", "a" * 65, "con", "nul", "a..b", "a.", "A-_.", "ａ", "a b", "%2e%2e", "a\x00", "~",
    "$HOME", "a:b", "*", "?", "a\nb", "", " ", "NUL.txt", "a" * 64,
]  # fmt: skip
SAFE_CHARS = st.characters(blacklist_categories=("Cs", "Cc"))
"""Any character crew accepts in text: every script, no control, no surrogate."""

hostile_text = st.one_of(
    st.text(st.one_of(st.characters(), st.sampled_from(NASTY_CHARS)), max_size=30),
    st.sampled_from(NASTY_CHARS),
    st.sampled_from([MAX_ROLE, MAX_ROLE + 1, MAX_TITLE + 1, MAX_NODE_TITLE + 1, 100_000]).map(
        lambda size: "x" * size
    ),
)
hostile_number = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63, -(2**63), 2**63 - 1, 10**30, 1e308, -1e308, 0, -1, 0.0005]),
)
leaf = st.one_of(st.none(), st.booleans(), hostile_number, hostile_text)
json_value = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=8,
)
valid_key = st.from_regex(NODE_KEY_PATTERN, fullmatch=True)
node_id = st.one_of(valid_key, st.sampled_from(PATH_LIKE_IDS), json_value)
safe_text = st.text(SAFE_CHARS, min_size=1, max_size=40).filter(lambda s: s.strip())


def maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The field's proper value, a hostile value of any type, or nothing."""
    return st.one_of(value, json_value)


@st.composite
def hostile_node(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_value)  # not even an object
    node: dict[str, Any] = {"id": draw(node_id)}
    fields = {
        "title": maybe(safe_text),
        "type": maybe(st.sampled_from(["task", "manage", "synthesis", "execute", "TASK"])),
        "suggested_agent_role": maybe(safe_text),
        "acceptance": maybe(st.lists(safe_text, max_size=3)),
        "deps": maybe(st.lists(valid_key, max_size=3)),
        "risks": json_value,
        "notes": maybe(safe_text),
        "llm": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "provider": maybe(st.just("offline")),
                    "model": maybe(safe_text),
                    "temperature": hostile_number,
                    "timeout_s": hostile_number,
                    "max_tokens": hostile_number,
                },
            )
        ),
    }
    for name in draw(st.sets(st.sampled_from(sorted(fields)))):
        node[name] = draw(fields[name])
    return node


@st.composite
def valid_plan(draw: st.DrawFn) -> dict[str, Any]:
    """A plan crew must accept: unicode everywhere, lengths at their limits, odd but
    legal ids, a random DAG in shuffled order."""
    keys = draw(st.lists(valid_key, min_size=1, max_size=6, unique_by=str.lower))
    nodes = []
    for index, key in enumerate(keys):
        deps = draw(st.lists(st.sampled_from(keys[:index]), unique=True)) if index else []
        node: dict[str, Any] = {"id": key, "title": draw(safe_text), "deps": deps}
        if draw(st.booleans()):
            node["suggested_agent_role"] = draw(
                st.one_of(safe_text, st.just("R" * MAX_ROLE), st.just("Writer_FR"))
            )
        if draw(st.booleans()):
            node["acceptance"] = draw(
                st.lists(st.one_of(safe_text, st.just("a\tb\nc\r\n")), max_size=3)
            )
        if draw(st.booleans()):
            node["notes"] = "n" * MAX_ITEM
        if draw(st.booleans()):
            node["llm"] = {"provider": "offline", "temperature": draw(st.floats(0, 2))}
        nodes.append(node)
    order = draw(st.permutations(nodes))
    return {"title": draw(st.one_of(safe_text, st.just("T" * MAX_TITLE))), "plan": order}


MUTABLE_FIELDS = [
    "plan title", "description", "title", "id", "suggested_agent_role", "acceptance", "notes",
    "risks", "assumptions", "deps", "type", "llm.model", "llm.temperature", "llm.timeout_s",
    "llm.max_tokens", "llm.provider",
]  # fmt: skip


@st.composite
def hostile_plan(draw: st.DrawFn) -> Any:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(json_value)
    if choice in (1, 2):  # a valid plan but for one value: most likely a string
        plan = draw(valid_plan())
        node = draw(st.sampled_from(plan["plan"]))
        field = draw(st.sampled_from(MUTABLE_FIELDS))
        value = draw(st.one_of(hostile_text, hostile_text.map(lambda t: [t]), json_value))
        if field == "plan title":
            plan["title"] = value
        elif field == "description":
            plan["description"] = value
        elif field.startswith("llm."):
            node["llm"] = {field[4:]: value}
        else:
            node[field] = value
        return plan
    plan_value: dict[str, Any] = {"plan": draw(st.lists(hostile_node(), max_size=5))}
    if draw(st.booleans()):
        plan_value["title"] = draw(maybe(safe_text))
    if draw(st.booleans()):
        plan_value["description"] = draw(json_value)
    return plan_value


def encode(value: Any) -> str:
    """JSON text as a hostile client writes it: NaN and Infinity left in, surrogates
    escaped (so they survive into the text)."""
    return json.dumps(value, allow_nan=True, ensure_ascii=True)


@st.composite
def hostile_text_document(draw: st.DrawFn) -> str:
    """Texts no encoder writes: duplicate keys, deep nesting, truncated documents."""
    plan = draw(valid_plan())
    choice = draw(st.integers(0, 3))
    text = encode(plan)
    if choice == 0:  # a duplicate key, in the plan or in a node
        key = draw(st.sampled_from(["title", "id", "plan", "deps"]))
        if key in ("title", "plan"):
            return text[:-1] + f', "{key}": {encode(plan[key])}}}'
        return text.replace('{"id": ', f'{{"{key}": "dup", "id": ', 1)
    if choice == 1:  # deep nesting in a field
        depth = draw(st.sampled_from([33, 100, 1_000, 5_000, 100_000]))
        return text[:-1] + ', "notes": ' + "[" * depth + "]" * depth + "}"
    if choice == 2:  # cut short
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    return text.replace('"title": ', '"title": NaN, "x": ', 1)


KNOWN_DEFECTS: list[Any] = [
    {"title": "\ud800", "plan": [{"id": "a", "title": "x"}]},
    {"title": "t", "plan": [{"id": "a", "title": "x", "acceptance": ["\u0000"]}]},
    {"title": "t", "plan": [{"id": "a", "title": "x", "suggested_agent_role": "W" * 129}]},
    {"title": "t", "plan": [{"id": "a", "title": "x", "llm": {"temperature": float("nan")}}]},
    {"title": "t", "plan": [{"id": "a", "title": "x", "llm": {"timeout_s": float("inf")}}]},
    {"title": "t", "plan": [{"id": "a", "title": "x", "llm": {"provider": []}}]},
    {"title": "t", "plan": [{"id": "x" * 100_000, "title": "x"}]},
]
"""What issue 13 found by hand (and the suite found since): always among the examples."""


DEEP = "[" * 100_000 + "]" * 100_000


def known_defects(shape: Any, deep: Any) -> Any:
    """Make a @given test also run on each known defect (`shape` turns a plan into the
    test's argument) and on `deep`, a document nested 100,000 levels."""

    def decorate(test: Any) -> Any:
        test = example(deep)(test)
        for plan in KNOWN_DEFECTS:
            test = example(shape(plan))(test)
        return test

    return decorate


# ---- the parser, in process ------------------------------------------------------------


def outcome(text: str) -> Plan | InvalidInputError:
    """Accepted or refused; anything else raised fails the test."""
    try:
        return parse_plan(decode_json(text, "plan.json"))
    except InvalidInputError as error:
        return error


def check_outcome(result: Plan | InvalidInputError) -> None:
    if isinstance(result, InvalidInputError):
        message = str(result)
        assert message.encode("utf-8") and len(message) < 150_000  # printable, bounded
        return
    stored = json.dumps(result.to_dict(), allow_nan=False, ensure_ascii=False)
    stored.encode("utf-8")  # no surrogate reached the plan
    assert "\x00" not in stored
    for node in result.nodes:
        assert NODE_KEY_PATTERN.fullmatch(node.id) and node.id != ".."


@SETTINGS
@known_defects(lambda plan: plan, {"plan": [[[]]]})
@given(plan=st.one_of(hostile_plan(), valid_plan()))
def test_generated_plans_are_accepted_or_refused_cleanly(plan: Any) -> None:
    check_outcome(outcome(encode(plan)))


@settings(SETTINGS, max_examples=100)
@given(plan=valid_plan())
def test_valid_plans_are_never_refused(plan: dict[str, Any]) -> None:
    result = outcome(encode(plan))
    assert isinstance(result, Plan), str(result)
    assert {n.id for n in result.nodes} == {n["id"] for n in plan["plan"]}


@SETTINGS
@given(text=hostile_text_document())
def test_hostile_documents_are_refused_cleanly(text: str) -> None:
    result = outcome(text)
    assert isinstance(result, InvalidInputError), text[:200]
    check_outcome(result)


WRONG_TYPES: list[Any] = [
    None, True, 0, -1, 2**63, 1.5, float("nan"), float("inf"), "", " ", "x" * 5_000,
    "\x00", "\ud800", [], [None], [[]], {}, {"a": 1}, [1, 2], ["a", 1],
]  # fmt: skip
NODE_FIELDS = [
    "id", "title", "type", "suggested_agent_role", "acceptance", "deps", "risks",
    "assumptions", "notes", "llm",
]  # fmt: skip
LLM_FIELDS = ["provider", "model", "temperature", "timeout_s", "max_tokens"]


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
def test_every_field_takes_every_wrong_type_cleanly(value: Any) -> None:
    """Deterministic: each field of a node, its llm block and the plan, with each value.

    (Found by the generated tests: a list as `llm.provider` was a TypeError, exit 1.)
    """
    base = {"title": "t", "plan": [{"id": "a", "title": "x"}]}
    cases: list[Any] = [value, {"title": "t", "plan": value}, {"title": "t", "plan": [value]}]
    for name in ("title", "description", "acceptance"):
        cases.append({**base, name: value})
    for name in NODE_FIELDS:
        cases.append({"title": "t", "plan": [{"id": "a", "title": "x", name: value}]})
    for name in LLM_FIELDS:
        cases.append({"title": "t", "plan": [{"id": "a", "title": "x", "llm": {name: value}}]})
    for case in cases:
        check_outcome(outcome(encode(case)))


def ring(length: int, extra: int = 0) -> dict[str, Any]:
    """Nodes c0 -> c1 -> ... -> c0 (a self-dependency for length 1), plus `extra`
    nodes depending on the ring."""
    nodes = [{"id": f"c{i}", "title": "t", "deps": [f"c{(i + 1) % length}"]} for i in range(length)]
    nodes += [{"id": f"x{i}", "title": "t", "deps": ["c0"]} for i in range(extra)]
    return {"title": "cycle", "plan": nodes}


@pytest.mark.parametrize("length", [*range(1, 26), 64, 500, 5_000])
def test_cycles_of_every_length_are_refused_showing_the_cycle(length: int) -> None:
    result = outcome(encode(ring(length, extra=2)))
    assert isinstance(result, InvalidInputError)
    (problem,) = [p for p in result.problems if "cycle" in p]
    shown = problem.split(": ", 1)[1].split(" -> ")
    assert shown[0] == shown[-1] and not any(key.startswith("x") for key in shown)
    if length <= 20:
        assert len(shown) == length + 1
    assert len(problem) < 2_000


# ---- the API, on both databases ---------------------------------------------------------


def _folders_match_rows(client: Any, root: Path, tmp_path: Path) -> None:
    """No half-created run, no file outside RUNS_ROOT."""
    rows = {run.id for run in call(client, repo(client).list_runs, limit=10_000)}
    folders = {p.name for p in root.iterdir()} if root.exists() else set()
    assert folders - {"crew.db", "crew.db-wal", "crew.db-shm"} == rows
    outside = {p.name for p in tmp_path.iterdir()} - {
        "runs",
        "crew.db",
        "crew.db-wal",
        "crew.db-shm",
    }
    assert not outside, outside
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve()), path


def test_api_accepts_or_refuses_generated_bodies_on_both_databases(
    db_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    seen: dict[int, int] = {}
    with api(db_url, tmp_path, TASKS_RATE_BURST=10_000, TASKS_RATE_PER_MIN=60_000) as client:

        @settings(SETTINGS, max_examples=API_EXAMPLES)
        @known_defects(lambda plan: {"task": plan}, ("text", DEEP))
        @given(
            body=st.one_of(
                st.builds(lambda p: {"task": p}, st.one_of(hostile_plan(), valid_plan())),
                st.dictionaries(hostile_text, json_value, max_size=4),
                json_value,
                hostile_text_document().map(lambda text: ("text", text)),
            )
        )
        def check(body: Any) -> None:
            before = len(call(client, repo(client).list_runs, limit=10_000))
            text = '{"task": ' + body[1] + "}" if isinstance(body, tuple) else encode(body)
            r = client.post(
                "/tasks", headers={**H, "Content-Type": "application/json"}, content=text
            )
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code in (202, 400, 413), r.text[:500]
            assert "Traceback" not in r.text and len(r.content) < 150_000
            after = len(call(client, repo(client).list_runs, limit=10_000))
            if r.status_code == 202:
                assert after == before + 1
                run = wait_status(client, r.json()["run_id"], DONE)
                assert run["status"] == "completed", run
            else:
                assert r.json()["code"] and after == before

        check()
        _folders_match_rows(client, root, tmp_path)
    assert seen.get(400), seen  # the generator does reach refusals


def test_api_runs_generated_valid_plans_on_both_databases(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    with api(db_url, tmp_path, TASKS_RATE_BURST=10_000, TASKS_RATE_PER_MIN=60_000) as client:

        @settings(SETTINGS, max_examples=API_EXAMPLES // 2)
        @given(plan=valid_plan())
        def check(plan: dict[str, Any]) -> None:
            r = client.post("/tasks", headers=H, content=encode({"task": plan}))
            assert r.status_code == 202, r.text[:1000]
            run = wait_status(client, r.json()["run_id"], DONE)
            assert run["status"] == "completed", run
            nodes = client.get(f"/runs/{run['id']}/nodes?limit=200", headers=H).json()["items"]
            stored = {node["key"]: node for node in nodes}
            for node in plan["plan"]:
                assert stored[node["id"]]["title"] == node["title"].strip()

        check()
        _folders_match_rows(client, root, tmp_path)


def test_api_refuses_cycles_on_both_databases(db_url: str, tmp_path: Path) -> None:
    with api(db_url, tmp_path, **NO_WORKER) as client:
        for length in (1, 2, 3, 17, 64):
            r = client.post("/tasks", headers=H, json={"task": ring(length, extra=1)})
            assert r.status_code == 400 and "cycle" in r.text, r.text
        assert call(client, repo(client).list_runs, limit=10) == []


# ---- the CLI, in process ----------------------------------------------------------------


def test_cli_exits_0_or_2_for_generated_plan_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_cli_env(tmp_path, monkeypatch)
    path = tmp_path / "plan.json"

    @settings(SETTINGS, max_examples=API_EXAMPLES)
    @known_defects(encode, DEEP)
    @given(
        text=st.one_of(st.one_of(hostile_plan(), valid_plan()).map(encode), hostile_text_document())
    )
    def check(text: str) -> None:
        path.write_text(text, encoding="utf-8")
        result: Result = CliRunner().invoke(app, ["run", "--task-file", str(path), "--json"])
        assert result.exit_code in (0, 2), (result.exit_code, result.output[-1000:])
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        assert len(result.stderr) < 150_000
        if result.exit_code == 0:
            assert json.loads(result.stdout)["status"] == "completed"

    check()
    runs = tmp_path / "runs"
    for file in runs.rglob("*"):
        assert file.resolve().is_relative_to(runs.resolve())
