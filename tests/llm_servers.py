"""Local fake LLM servers for tests: real TCP servers on 127.0.0.1 speaking the wire formats.

`OllamaServer` answers `POST /api/chat` and `GET /api/tags`; `OpenAIServer` answers
`POST /v1/chat/completions` and `GET /v1/models`. Bodies are shaped like the real
services' answers (field names, nesting, error objects), so a provider that works here
reads the real thing the same way.

Each server runs its own event loop in a background thread, so it serves a test's async
client, a synchronous CLI runner and a subprocess alike. It is scriptable: queue `Reply`
objects (status, headers, body, delay, dropped connection, an answer cut off after a few
bytes) with `enqueue`, or set `responder` to compute replies; with neither, chat calls
succeed with a default answer. Every request is recorded (`requests`) with its headers,
decoded JSON body and the moment it arrived.

Use as a context manager (`with OpenAIServer() as server:`) or through the
`ollama_server` / `openai_server` fixtures (import them into a conftest).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self

import pytest

DEFAULT_TEXT = "Réponse de test : le serveur local a bien reçu la demande."
DEFAULT_JSON_TEXT = '{"ok": true}'


@dataclass
class Reply:
    """One scripted answer.

    `body` None on a chat path means "the default success payload", customised with
    `content`, `model`, `finish_reason` and `usage`; any other body is sent as given (a
    dict/list as JSON, str/bytes raw). `delay_s` waits before answering; `drop` closes
    the connection without answering; `cut_after` sends the status line, the headers
    (with the full Content-Length) and only that many bytes of the body, then closes;
    `trickle_s` sends the body one byte at a time, waiting that long before each.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    content: str | None = None
    model: str | None = None
    finish_reason: str = "stop"
    usage: bool = True
    prompt_tokens: int | None = None
    """Usage to report instead of the count of the text (a server that miscounts)."""
    completion_tokens: int | None = None
    cut_after: int | None = None
    trickle_s: float = 0.0


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    raw_body: bytes
    received_at: float = field(default_factory=time.monotonic)
    """time.monotonic() when the request had been read (to check waits between tries)."""

    @property
    def json(self) -> Any:
        return json.loads(self.raw_body) if self.raw_body else None


Responder = Callable[[RecordedRequest], Reply | None]


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def refused_url(path: str = "") -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


class FakeLLMServer:
    """The HTTP/1.1 server shared by both fakes (keep-alive, Content-Length bodies)."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.responder: Responder | None = None
        self.port = 0
        self._queues: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._in_flight = 0
        self.max_in_flight = 0
        """The most requests handled at the same time (for concurrency-limit tests)."""
        self.connections = 0
        """TCP connections accepted so far (to check that clients reuse connections)."""

    # -- scripting -------------------------------------------------------------------

    chat_path = "/"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, *replies: Reply, path: str | None = None) -> None:
        """Queue replies for `path` (the chat path by default), used first-in first-out."""
        with self._lock:
            self._queues.setdefault(path or self.chat_path, deque()).extend(replies)

    def chat_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == self.chat_path]

    def _next_reply(self, request: RecordedRequest) -> Reply | None:
        with self._lock:
            queue = self._queues.get(request.path)
            if queue:
                return queue.popleft()
        return self.responder(request) if self.responder is not None else None

    def route(
        self, request: RecordedRequest, reply: Reply | None
    ) -> tuple[int, Any, dict[str, str]]:
        """The (status, body, headers) for a request; subclasses speak their wire format."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake LLM server did not start")

    def stop(self) -> None:
        if self._loop is None or self._thread is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(ready))
        finally:
            self._loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should end."""
        line = await reader.readline()
        if not line.strip():
            return False
        method, target, _version = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(length) if length else b""
        request = RecordedRequest(method.upper(), target.split("?", 1)[0], headers, body)
        with self._lock:
            self.requests.append(request)
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            reply = self._next_reply(request)
            if reply is not None and reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            if reply is not None and reply.drop:
                return False
            status, payload, extra_headers = self.route(request, reply)
        finally:
            self._in_flight -= 1
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = json.dumps(payload).encode()
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(data)}"]
        lowered = {k.lower() for k in extra_headers}
        if "content-type" not in lowered:
            head.append("Content-Type: application/json; charset=utf-8")
        head.extend(f"{k}: {v}" for k, v in extra_headers.items())
        keep_alive = headers.get("connection", "").lower() != "close"
        head.append("Connection: " + ("keep-alive" if keep_alive else "close"))
        if reply is not None and reply.cut_after is not None:
            keep_alive, data = False, data[: reply.cut_after]
        if reply is not None and reply.trickle_s:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            for index in range(len(data)):
                await asyncio.sleep(reply.trickle_s)
                writer.write(data[index : index + 1])
                await writer.drain()
            return keep_alive
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        await writer.drain()
        return keep_alive


def _messages_text(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return ""
    return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))


class OllamaServer(FakeLLMServer):
    """Speaks Ollama's API. `models` lists the installed models; a chat request for any
    other model gets Ollama's 404 "model not found" answer (None: every model exists)."""

    chat_path = "/api/chat"

    def __init__(self, models: list[str] | None = None) -> None:
        super().__init__()
        self.models = models

    def route(
        self, request: RecordedRequest, reply: Reply | None
    ) -> tuple[int, Any, dict[str, str]]:
        if reply is not None and reply.body is not None:
            return reply.status, reply.body, reply.headers
        if request.path == "/api/tags":
            return 200, self.tags_body(), {}
        if request.path != self.chat_path:
            return 404, "404 page not found", {"Content-Type": "text/plain"}
        body = request.json or {}
        model = str(body.get("model", ""))
        if self.models is not None and model not in self.models:
            return 404, {"error": f'model "{model}" not found, try pulling it first'}, {}
        reply = reply or Reply()
        return reply.status, self.chat_body(body, reply), reply.headers

    def tags_body(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2024-07-23T10:15:02.123456789+02:00",
                    "size": 4661224676,
                    "digest": "365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1",
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "llama",
                        "families": ["llama"],
                        "parameter_size": "8.0B",
                        "quantization_level": "Q4_0",
                    },
                }
                for name in (self.models or ["llama3.1:8b"])
            ]
        }

    @staticmethod
    def chat_body(request_body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        wants_json = request_body.get("format") == "json" or isinstance(
            request_body.get("format"), dict
        )
        content = (
            reply.content
            if reply.content is not None
            else (DEFAULT_JSON_TEXT if wants_json else DEFAULT_TEXT)
        )
        body: dict[str, Any] = {
            "model": reply.model or request_body.get("model", ""),
            "created_at": "2024-07-23T08:15:02.123456789Z",
            "message": {"role": "assistant", "content": content},
            "done_reason": reply.finish_reason,
            "done": True,
            "total_duration": 4883583458,
            "load_duration": 1334875,
            "prompt_eval_duration": 342546000,
            "eval_duration": 4535599000,
        }
        if reply.usage:
            body["prompt_eval_count"] = (
                reply.prompt_tokens
                if reply.prompt_tokens is not None
                else _tokens(_messages_text(request_body))
            )
            body["eval_count"] = (
                reply.completion_tokens if reply.completion_tokens is not None else _tokens(content)
            )
        return body


class OpenAIServer(FakeLLMServer):
    """Speaks the OpenAI chat completions API under /v1.

    `api_key` set: requests without `Authorization: Bearer <api_key>` get OpenAI's 401
    (whose message, like the real one, quotes part of the key it was given).
    `model_aliases` maps a requested model to the dated name the answer reports.
    """

    chat_path = "/v1/chat/completions"

    def __init__(
        self, api_key: str | None = None, model_aliases: dict[str, str] | None = None
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.model_aliases = model_aliases or {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}
        self.models = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"]

    @property
    def base_url(self) -> str:
        """What OPENAI_BASE_URL should be set to."""
        return self.url + "/v1"

    def route(
        self, request: RecordedRequest, reply: Reply | None
    ) -> tuple[int, Any, dict[str, str]]:
        if reply is not None and reply.body is not None:
            return reply.status, reply.body, reply.headers
        if self.api_key is not None:
            given = request.headers.get("authorization", "")
            if given != f"Bearer {self.api_key}":
                shown = given.removeprefix("Bearer ")
                return (
                    401,
                    openai_error(
                        f"Incorrect API key provided: {shown}. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.",
                        "invalid_request_error",
                        "invalid_api_key",
                    ),
                    {},
                )
        if request.path == "/v1/models":
            return 200, self.models_body(), {}
        if request.path != self.chat_path:
            return (
                404,
                openai_error(
                    f"Unknown request URL: {request.method} {request.path}.",
                    "invalid_request_error",
                    "unknown_url",
                ),
                {},
            )
        reply = reply or Reply()
        return reply.status, self.chat_body(request.json or {}, reply), reply.headers

    def models_body(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
                for m in self.models
            ],
        }

    def chat_body(self, request_body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        requested = str(request_body.get("model", ""))
        wants_json = (request_body.get("response_format") or {}).get("type") in (
            "json_object",
            "json_schema",
        )
        content = (
            reply.content
            if reply.content is not None
            else (DEFAULT_JSON_TEXT if wants_json else DEFAULT_TEXT)
        )
        body: dict[str, Any] = {
            "id": "chatcmpl-A1b2C3d4E5f6G7h8I9j0",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or self.model_aliases.get(requested, requested),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "system_fingerprint": "fp_0ba0d124f1",
        }
        if reply.usage:
            prompt = _tokens(_messages_text(request_body))
            completion = _tokens(content)
            if reply.prompt_tokens is not None:
                prompt = reply.prompt_tokens
            if reply.completion_tokens is not None:
                completion = reply.completion_tokens
            body["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            }
        return body


def openai_error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """An error body shaped like OpenAI's."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def openai_error_reply(
    status: int,
    message: str,
    type_: str = "server_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    return Reply(status=status, body=openai_error(message, type_, code), headers=headers or {})


def rate_limited(retry_after: str = "1") -> Reply:
    """OpenAI's 429, with Retry-After."""
    return openai_error_reply(
        429,
        "Rate limit reached for gpt-4o-mini in organization org-test on requests per min "
        "(RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
        "requests",
        "rate_limit_exceeded",
        {"Retry-After": retry_after},
    )


@pytest.fixture
def ollama_server() -> Iterator[OllamaServer]:
    """A running OllamaServer (every model installed)."""
    with OllamaServer() as server:
        yield server


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A running OpenAIServer that accepts any key."""
    with OpenAIServer() as server:
        yield server
