"""Hostile HTTP: keys, header injection, oversized bodies, traversal, CORS, idle sockets.

Most requests go through the ASGI app, some as raw ASGI messages (headers no HTTP client
would send: CR/LF in a value, bytes outside ASCII, a lying Content-Length); the idle
connection test needs a real `crew serve` process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from crew.api.spec import ENDPOINTS
from tests.api_helpers import KEY, H, api, assert_error, call, repo, seed_run
from tests.api_server import free_port, wait_until_serving

BAD_KEYS: dict[str, bytes | None] = {
    "missing": None,
    "wrong": b"not-the-key",
    "empty": b"",
    "huge": b"k" * 100_000,
    "prefix": KEY[:-1].encode(),
    "longer": KEY.encode() + b"x",
    "padded": b" " + KEY.encode() + b" ",
    "latin-1": "clé-é".encode("latin-1"),
    "utf-8": "clé-😀".encode(),
    "nul": KEY.encode() + b"\x00",
    "two keys": f"{KEY}, second-key".encode(),
}


NO_WORKER = {"SERVE_EMBEDDED_WORKER": "false"}
"""For tests that only need answers: no embedded worker to start and stop."""


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def operations(public: bool) -> list[tuple[str, str]]:
    from crew.api.routes import load

    load()
    return sorted({(e.method, concrete(e.path)) for e in ENDPOINTS if e.public == public})


async def asgi(
    app: Any,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    chunks: int = 1,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request as raw ASGI messages: whatever bytes a client could put on the wire."""
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        # 2.4: the server says it reports disconnects itself, so a file response does
        # not wait on receive() (which here answers "disconnected" once the body is read).
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode("latin-1", "replace"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    size = max(1, len(body) // chunks)
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], list(start.get("headers", [])), content


def raw(client: Any, method: str, path: str, headers: dict[str, bytes], **kw: Any) -> Any:
    pairs = [(k.lower().encode(), v) for k, v in headers.items()]
    return call(client, asgi, client.app, method, path, pairs, **kw)


# ---- API keys on every endpoint --------------------------------------------------------


def test_bad_keys_are_401_on_every_endpoint(sqlite_url: str, tmp_path: Path) -> None:
    with api(sqlite_url, tmp_path, **NO_WORKER) as client:
        run_id = call(client, seed_run, repo(client))
        for variant, key in sorted(BAD_KEYS.items()):
            headers = {} if key is None else {"X-API-Key": key}
            _refused_everywhere(client, run_id, headers, variant)


def _refused_everywhere(client: Any, run_id: str, headers: dict[str, bytes], variant: str) -> None:
    """401 with WWW-Authenticate on every operation needing a key; public ones answer."""
    for method, path in operations(public=False):
        path = path.replace("/x", f"/{run_id}", 1) if path.startswith("/runs/") else path
        status, response_headers, body = raw(client, method, path, headers)
        assert status == 401, (variant, method, path, status, body[:300])
        names = {k.lower() for k, _ in response_headers}
        assert b"www-authenticate" in names and b"traceback" not in body.lower()
        assert len(body) < 1_000  # the key is never echoed back
    for method, path in operations(public=True):  # open to all, whatever the key
        status, _, body = raw(client, method, path, headers)
        assert status != 401 and status < 500, (variant, method, path, status, body[:300])


def test_every_configured_key_works_and_query_keys_only_on_the_stream(
    sqlite_url: str, tmp_path: Path
) -> None:
    with api(sqlite_url, tmp_path, **NO_WORKER) as client:
        assert client.get("/runs", headers={"X-API-Key": "second-key"}).status_code == 200
        assert client.get("/runs", headers=H).status_code == 200
        assert_error(client.get(f"/runs?api_key={KEY}"), 401)  # not a header: refused
        assert_error(client.get("/events/stream?run_id=x&api_key=wrong"), 401)


# ---- header injection ------------------------------------------------------------------


def test_headers_with_line_breaks_never_reach_a_response(sqlite_url: str, tmp_path: Path) -> None:
    injected = b"abc\r\nSet-Cookie: stolen=1"
    with api(sqlite_url, tmp_path, **NO_WORKER) as client:
        cases: list[tuple[str, str, dict[str, bytes]]] = [
            ("GET", "/runs", {"X-API-Key": KEY.encode(), "X-Request-ID": injected}),
            ("GET", "/runs", {"X-API-Key": KEY.encode(), "X-Timezone": b"UTC\r\nX-Evil: 1"}),
            ("GET", "/runs", {"X-API-Key": injected}),
            ("GET", "/health", {"X-Request-ID": b"\x00\x01\x02" + b"r" * 10_000}),
            ("GET", "/runs/a%0d%0aSet-Cookie:x", {"X-API-Key": KEY.encode()}),
            (
                "POST",
                "/tasks",
                {
                    "X-API-Key": KEY.encode(),
                    "Idempotency-Key": injected,
                    "Content-Type": b"application/json",
                },
            ),
        ]
        for method, path, headers in cases:
            body = b'{"task": {"type": "demo"}}' if method == "POST" else b""
            status, response_headers, content = raw(client, method, path, headers, body=body)
            assert status < 500, (path, status, content[:200])
            for name, value in response_headers:
                assert b"\r" not in value and b"\n" not in value, (name, value)
                assert name != b"set-cookie" and name != b"x-evil"
            request_id = dict(response_headers)[b"x-request-id"]
            assert re.fullmatch(rb"[A-Za-z0-9._-]{1,128}", request_id)


def test_a_download_name_cannot_inject_headers(sqlite_url: str, tmp_path: Path) -> None:
    with api(sqlite_url, tmp_path, **NO_WORKER) as client:
        r = repo(client)
        run_id = call(client, seed_run, r, nodes=1, events=0)
        name = 'a"\r\nSet-Cookie: x=1;.md'
        folder = tmp_path / "runs" / run_id
        folder.mkdir(parents=True)
        (folder / name).write_text("content", encoding="utf-8")
        artifact = call(
            client, r.add_artifact, run_id=run_id, node_id=None, type="markdown",
            path=f"{run_id}/{name}", content="content", summary=None, sha256="0" * 64, size=7,
        )  # fmt: skip
        status, headers, body = raw(
            client, "GET", f"/artifacts/{artifact.id}/download", {"X-API-Key": KEY.encode()}
        )
        assert status == 200 and body == b"content"
        for header, value in headers:
            assert b"\r" not in value and b"\n" not in value and header != b"set-cookie"


# ---- oversized bodies ------------------------------------------------------------------


def test_oversized_and_lying_bodies_are_refused(sqlite_url: str, tmp_path: Path) -> None:
    limit = 1024 * 1024
    key = {"X-API-Key": KEY.encode(), "Content-Type": b"application/json"}
    with api(sqlite_url, tmp_path, **NO_WORKER) as client:
        cases = [
            ({**key, "Content-Length": b"10000000000"}, b"{}", 1, 413),
            ({**key, "Content-Length": b"99999999999999999999999999"}, b"{}", 1, 413),
            ({**key}, b"[" * (limit + 1), 64, 413),  # chunked, no length given
            ({**key, "Content-Length": b"2"}, b" " * (limit + 10), 8, 413),  # lies
            ({**key, "Content-Length": b"abc"}, b"{}", 1, 400),
            ({**key, "Content-Length": b"-1"}, b"{}", 1, 400),
            ({**key}, b" " * limit, 16, 400),  # exactly the limit: read, then refused
        ]
        for headers, body, chunks, expected in cases:
            status, _, content = raw(client, "POST", "/tasks", headers, body=body, chunks=chunks)
            assert status == expected, (headers.get("Content-Length"), status, content[:200])
            assert b'"code"' in content
        assert call(client, repo(client).list_runs, limit=10) == []


# ---- traversal -------------------------------------------------------------------------


def test_downloads_never_leave_runs_root(db_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET", encoding="utf-8")
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    (outside_dir / "x.md").write_text("SECRET", encoding="utf-8")
    with api(db_url, tmp_path, **NO_WORKER) as client:
        r = repo(client)
        run_id = call(client, seed_run, r, nodes=1, events=0)
        folder = tmp_path / "runs" / run_id
        folder.mkdir(parents=True)
        (folder / "ok.md").write_text("fine", encoding="utf-8")
        (folder / "link.md").symlink_to(secret)
        (folder / "dirlink").symlink_to(outside_dir)
        (folder / "loop.md").symlink_to(folder / "loop.md")
        (folder / "inside.md").symlink_to(folder / "ok.md")
        paths = [
            "../secret.txt", f"{run_id}/../../secret.txt", str(secret), f"{run_id}/link.md",
            f"{run_id}/dirlink/x.md", f"{run_id}/loop.md", run_id, f"{run_id}/", "",
            "%2e%2e/secret.txt", "..\\secret.txt", f"{run_id}/missing.md", "~/secret.txt",
            f"{run_id}/" + "n" * 300, "/" * 5000,
        ]  # fmt: skip
        if db_url.startswith("sqlite"):
            paths.append(f"{run_id}/ok.md\x00")  # PostgreSQL cannot even store this one
        ids = []
        for number, path in enumerate([f"{run_id}/ok.md", f"{run_id}/inside.md", *paths]):
            record = call(
                client, r.add_artifact, run_id=run_id, node_id=None, type="markdown", path=path,
                content=None, summary=None, sha256=f"{number:064d}", size=1,
            )  # fmt: skip
            ids.append(record.id)
        assert client.get(f"/artifacts/{ids[0]}/download", headers=H).text == "fine"
        assert client.get(f"/artifacts/{ids[1]}/download", headers=H).text == "fine"
        for artifact_id, path in zip(ids[2:], paths, strict=True):
            answer = client.get(f"/artifacts/{artifact_id}/download", headers=H)
            assert_error(answer, 404)
            assert "SECRET" not in answer.text, path
        for url in (
            "/artifacts/..%2F..%2Fsecret.txt/download",
            "/artifacts/%2e%2e/download",
            "/artifacts/%00/download",
        ):
            assert_error(client.get(url, headers=H), 404)
        status, _, body = raw(client, "GET", "/artifacts/../../secret.txt/download", H_RAW)
        assert status == 404 and b"SECRET" not in body


H_RAW = {"X-API-Key": KEY.encode()}


# ---- CORS ------------------------------------------------------------------------------


def test_cors_answers_only_the_configured_origins(sqlite_url: str, tmp_path: Path) -> None:
    allowed = "https://app.example"
    with api(sqlite_url, tmp_path, CORS_ORIGINS=allowed, **NO_WORKER) as client:
        for origin in (
            "https://evil.example", "null", "https://app.example.evil.example",
            "http://app.example", "https://app.example:8443", "HTTPS://APP.EXAMPLE.",
        ):  # fmt: skip
            simple = client.get("/runs", headers={**H, "Origin": origin})
            assert simple.status_code == 200
            assert "access-control-allow-origin" not in simple.headers, origin
            preflight = client.options(
                "/tasks",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "X-API-Key",
                },
            )
            assert preflight.status_code == 400, origin
            assert "access-control-allow-origin" not in preflight.headers
        ok = client.options(
            "/tasks",
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "X-API-Key, Content-Type",
            },
        )
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == allowed
        # Even a refusal carries the headers, so the allowed page can read the error.
        denied = client.get("/runs", headers={"Origin": allowed})
        assert denied.status_code == 401
        assert denied.headers["access-control-allow-origin"] == allowed
        assert "access-control-allow-credentials" not in denied.headers
    with api(sqlite_url, tmp_path, **NO_WORKER) as client:  # no CORS_ORIGINS: no origin at all
        answer = client.get("/runs", headers={**H, "Origin": allowed})
        assert "access-control-allow-origin" not in answer.headers


# ---- a real server: idle connections, huge headers -------------------------------------

SERVE_KEY = "hostile-key"


def _idle_sockets(port: int, count: int) -> list[socket.socket]:
    """Connections that stay open doing nothing useful: silent ones, ones stopped in
    the middle of their headers, ones that promised a body and send none."""
    sockets = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        kind = index % 4
        if kind == 1:
            sock.sendall(b"GET /runs HTTP/1.1\r\nHost: x\r\n")
        elif kind == 2:
            sock.sendall(b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{")
        elif kind == 3:
            sock.sendall(b"GE")
        sockets.append(sock)
    return sockets


def _raw_status(port: int, path: str, method: str = "GET", extra: bytes = b"") -> int:
    """The status of a request sent byte for byte: no client normalises `..` away or
    refuses to send a Content-Length its body does not have."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {SERVE_KEY}\r\n"
        sock.sendall(head.encode() + b"Connection: close\r\n" + extra)
        answer = b""
        while chunk := sock.recv(65_536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.mark.slow
def test_serve_answers_while_200_connections_sit_idle(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"API_KEY", "DATABASE_URL"}}
    env.update({"RUNS_ROOT": str(tmp_path / "runs"), "NO_COLOR": "1", "API_KEY": SERVE_KEY})
    proc = subprocess.Popen(
        [sys.executable, "-m", "crew", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    idle: list[socket.socket] = []
    try:
        wait_until_serving(proc, f"{base}/health")
        idle = _idle_sockets(port, 200)
        headers = {"X-API-Key": SERVE_KEY}
        with httpx.Client(base_url=base, timeout=20) as http:
            statuses = [http.get("/runs", headers=headers).status_code for _ in range(20)]
            statuses.append(http.get("/health").status_code)
            started = http.post("/tasks", headers=headers, json={"task": {"type": "demo"}})
            statuses.append(started.status_code)
            huge = http.get("/runs", headers={"X-API-Key": "k" * 100_000})
            chunked = http.post(
                "/tasks", headers=headers, content=(b" " * 65_536 for _ in range(20))
            )
        assert statuses == [200] * 21 + [202], statuses
        assert 400 <= huge.status_code < 500  # refused by the HTTP layer or as a bad key
        assert chunked.status_code == 413, chunked.text
        lying = b"Content-Length: 5000000\r\n\r\n{}"  # a length the body does not have
        assert _raw_status(port, "/tasks", "POST", lying) == 413
        for path in ("/artifacts/../../etc/passwd/download", "/runs/%00", "/runs/..%2f.."):
            assert 400 <= _raw_status(port, path, extra=b"\r\n") < 500, path
        assert proc.poll() is None
    finally:
        for sock in idle:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert "Traceback" not in output, output[-3000:]
