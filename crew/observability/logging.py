"""Log configuration: LOG_LEVEL, LOG_FORMAT=text|json, secrets masked, `-v` for debug.

Configured by the commands (never at import, so `crew --help` pays nothing), once per
process: one handler on the root logger writing to stderr, so crew's loggers, uvicorn's
and the libraries' all come out the same way.

- `json`: one object per line with `ts` (UTC, ISO 8601), `level`, `logger`, `msg`,
  `run_id` and `node_key` (null when the line is about no run or node, so every line has
  the same keys), `request_id` in the API, and any structured fields the call passed (the
  access line adds `method`, `route`, `status`, `duration_ms`; a run's progress events,
  logged by `crew run` under `crew.events`, add `event` and `event_id`). The ids come
  from crew.observability.context unless the call names them itself, as the progress
  events do: an event is about its own node whichever task reports it.
- `text`: `LEVEL logger: message`, with the run and node ids appended when set.
- Secrets never appear: every line goes through a Redactor holding the configured
  secret values (API_KEY, OPENAI_API_KEY, passwords in URLs) and the well-known secret
  shapes (Authorization headers, X-API-Key, `?api_key=`), after formatting, so
  arguments and tracebacks are covered too.
- Tracebacks are shown with `-v` (which also sets DEBUG); otherwise a logged exception
  is summarised as `Type: message` on the same line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from crew.observability import context
from crew.observability.redact import Redactor, secret_values

HANDLER_NAME = "crew"
QUIET_LIBRARIES = (
    "alembic",
    "httpx",
    "httpcore",
    "aiosqlite",
    "asyncio",
    "multipart",
    "urllib3",
)
"""Chatty at INFO/DEBUG; kept at WARNING unless -v (then INFO)."""

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}


_IDS = frozenset({"run_id", "node_key"})
"""Fields a call may set itself (`extra=`), overriding the context's value."""


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr


class _Formatter(logging.Formatter):
    def __init__(self, redactor: Redactor, tracebacks: bool) -> None:
        super().__init__()
        self.redactor = redactor
        self.tracebacks = tracebacks

    def error_text(self, record: logging.LogRecord) -> str | None:
        if record.exc_info and record.exc_info[1] is not None:
            if self.tracebacks:
                return self.formatException(record.exc_info)
            error = record.exc_info[1]
            return f"{type(error).__name__}: {error}"
        return None


class JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "run_id": None,
            "node_key": None,
        }
        line.update(context.current())
        for key, value in record.__dict__.items():
            if key in _IDS or (key not in _STANDARD and key not in line):
                line[key] = value
        error = self.error_text(record)
        if error:
            line["exc"] = error
        if record.stack_info and self.tracebacks:
            line["stack"] = record.stack_info
        return self.redactor(json.dumps(line, ensure_ascii=False, default=str))


class TextFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        run_id = getattr(record, "run_id", None) or context.run_id.get()
        node_key = getattr(record, "node_key", None) or context.node_key.get()
        if run_id and "run_id=" not in text:
            text += f" run_id={run_id}"
        if node_key and "node_key=" not in text:
            text += f" node_key={node_key}"
        error = self.error_text(record)
        if error:
            text += ("\n" if self.tracebacks else " | ") + error
        return self.redactor(text)


def configure_logging(settings: Any, *, verbose: bool = False) -> logging.Handler:
    """Install (or replace) crew's stderr handler on the root logger; returns it."""
    level = logging.DEBUG if verbose else getattr(logging, settings.log_level, logging.INFO)
    redactor = Redactor(secret_values(settings))
    kind = JsonFormatter if settings.log_format == "json" else TextFormatter
    handler = StderrHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(kind(redactor, tracebacks=verbose))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = logging.INFO if verbose else logging.WARNING
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(quiet, level))
    return handler


def json_logs() -> bool:
    """True when crew's handler is installed and writes JSON lines: progress that would
    otherwise be printed as text then goes through the log as JSON too."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == HANDLER_NAME:
            return isinstance(handler.formatter, JsonFormatter)
    return False
