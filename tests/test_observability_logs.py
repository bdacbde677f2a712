"""Structured logs: JSON line shape, context ids, one access line per request, secrets
masked, tracebacks only with -v."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crew.observability import context
from crew.observability.logging import HANDLER_NAME, configure_logging
from crew.settings import settings_from_values
from tests.api_helpers import KEY, H, api

OPENAI_KEY = "sk-live-abcdefghijklmnop0123"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if handler.get_name() == HANDLER_NAME:
            root.removeHandler(handler)
    root.setLevel(level)


def _settings(**values: str) -> Any:
    return settings_from_values(
        {"API_KEY": f"{KEY},second-key", "OPENAI_API_KEY": OPENAI_KEY, **values}
    )


def _lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_json_lines_carry_the_fields_and_the_engine_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(_settings(LOG_FORMAT="json"))
    run_token, node_token = context.run_id.set("run-1"), context.node_key.set("n1")
    try:
        logging.getLogger("crew.engine").info("node %s started", "n1")
    finally:
        context.run_id.reset(run_token)
        context.node_key.reset(node_token)
    logging.getLogger("crew.engine").debug("not shown at INFO")
    (line,) = _lines(capsys.readouterr().err)
    assert set(line) >= {"ts", "level", "logger", "msg", "run_id", "node_key"}
    assert line["level"] == "INFO" and line["logger"] == "crew.engine"
    assert line["msg"] == "node n1 started"
    assert line["run_id"] == "run-1" and line["node_key"] == "n1"
    assert line["ts"].endswith("+00:00")


def test_secrets_never_appear_in_logs(capsys: pytest.CaptureFixture[str]) -> None:
    for log_format in ("json", "text"):
        configure_logging(_settings(LOG_FORMAT=log_format))
        log = logging.getLogger("crew.test")
        log.warning("key %s and %s", KEY, OPENAI_KEY)
        log.warning("headers: Authorization: Bearer some-token-value X-API-Key: another-value")
        log.warning("GET /events/stream?run_id=r&api_key=querysecret1")
        try:
            raise RuntimeError(f"provider said: invalid key {OPENAI_KEY}")
        except RuntimeError:
            log.exception("call failed")
        err = capsys.readouterr().err
        for secret in (KEY, OPENAI_KEY, "some-token-value", "another-value", "querysecret1"):
            assert secret not in err, (log_format, err)
        assert err.count("[redacted]") >= 6


def test_tracebacks_only_with_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("crew.test")
    for verbose in (False, True):
        configure_logging(_settings(LOG_FORMAT="json"), verbose=verbose)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
        log.debug("debug line")
        lines = _lines(capsys.readouterr().err)
        assert lines[0]["msg"] == "it failed"
        if verbose:
            assert "Traceback" in lines[0]["exc"] and lines[1]["level"] == "DEBUG"
        else:
            assert lines[0]["exc"] == "ValueError: boom" and len(lines) == 1


def test_one_access_line_per_request_with_its_request_id(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with api(sqlite_url, tmp_path, LOG_FORMAT="json") as client:
        configure_logging(_settings(LOG_FORMAT="json"))
        capsys.readouterr()
        r = client.get("/runs/unknown-run", headers={**H, "X-Request-ID": "req-abc-1"})
        assert r.status_code == 404
        r = client.get("/runs?limit=5", headers={"X-API-Key": "wrong"})
        assert r.status_code == 401
        lines = [x for x in _lines(capsys.readouterr().err) if x["logger"] == "crew.api.access"]
    assert len(lines) == 2, lines
    first, second = lines
    assert first["request_id"] == "req-abc-1" and first["route"] == "/runs/{run_id}"
    assert first["status"] == 404 and first["method"] == "GET" and first["duration_ms"] >= 0
    assert second["route"] == "/runs" and second["status"] == 401
    assert second["request_id"] == r.headers["x-request-id"]
    assert "wrong" not in json.dumps(lines)


def test_text_format_keeps_the_access_line(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with api(sqlite_url, tmp_path) as client:
        configure_logging(_settings())
        capsys.readouterr()
        client.get("/health", headers={"X-Request-ID": "req-text-1"})
        err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "crew.api.access" in x]
    assert line.startswith("INFO crew.api.access: GET /health 200 ")
    assert line.endswith("request_id=req-text-1")
