"""The OpenAPI 3.1 document, built from the route table and the schemas below."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from crew import __version__
from crew.api.middleware import zone_names
from crew.api.spec import ENDPOINTS
from crew.domain.limits import MAX_DESCRIPTION, MAX_ITEM, MAX_ITEMS, MAX_MODEL, MAX_TITLE
from crew.domain.providers import BUILTIN_PROVIDERS
from crew.llm.registry import provider_names

TS = {"type": "string", "format": "date-time"}
TS_NULL = {"type": ["string", "null"], "format": "date-time"}
STR_NULL = {"type": ["string", "null"]}
INT = {"type": "integer"}
OBJ = {"type": "object"}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = True) -> Any:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
    }
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _page(item: str) -> Any:
    return _obj(
        {
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
            "total": INT,
            "limit": INT,
            "offset": INT,
        }
    )


RUN_ITEM = {
    "id": {"type": "string"},
    "title": {"type": "string"},
    "status": {"type": "string"},
    "created_at": TS,
    "started_at": TS_NULL,
    "ended_at": TS_NULL,
    "request_id": STR_NULL,
    "input_tokens": INT,
    "output_tokens": INT,
    "error": STR_NULL,
    "cost_usd": {"type": ["number", "null"]},
}
PROVIDER_NAME: dict[str, Any] = {
    "type": "string",
    "enum": list(BUILTIN_PROVIDERS),
    "description": "An LLM provider: built in, or added by an installed package.",
}
"""Its `enum` is filled with the installed plugins' names when the document is built
(plugins are loaded then, not when this module is imported)."""
LLM_CHOICE = _obj(
    {
        "provider": PROVIDER_NAME,
        "model": {"type": "string"},
    },
    [],
    extra=False,
)
PLAN = {"type": "object", "description": 'A plan in the plan file format, or {"type": "demo"}.'}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "request_id": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
        ["detail", "code", "request_id"],
    ),
    "Health": _obj(
        {"status": {"const": "ok"}, "db": {"const": "ok"}, "version": {"type": "string"}}
    ),
    "HealthUnavailable": _obj(
        {
            "status": {"type": "string"},
            "db": {"const": "unavailable"},
            "version": {"type": "string"},
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "request_id": {"type": "string"},
        },
        ["status", "db", "version"],
    ),
    "RunItem": _obj(
        {**RUN_ITEM, "nodes": _obj({"total": INT, "completed": INT, "failed": INT, "skipped": INT})}
    ),
    "RunPage": _page("RunItem"),
    "Run": _obj(
        {
            **RUN_ITEM,
            "options": OBJ,
            "task_spec": OBJ,
            "cost_unknown": {"type": "boolean"},
            "cancel_requested_at": TS_NULL,
            "updated_at": TS,
            "owner": STR_NULL,
            "lease_expires_at": TS_NULL,
            "lease": {"enum": ["held", "expired", "free"]},
            "recoveries": INT,
            "error_code": STR_NULL,
            "summary": _obj(
                {
                    "nodes_total": INT,
                    "nodes_completed": INT,
                    "nodes_failed": INT,
                    "nodes_skipped": INT,
                    "artifacts_total": INT,
                    "events_total": INT,
                    "duration_ms": {"type": ["number", "null"]},
                }
            ),
        }
    ),
    "Worker": _obj(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "kind": {"enum": ["worker", "serve", "run"]},
            "host": {"type": "string"},
            "pid": INT,
            "status": {"enum": ["running", "draining"]},
            "max_runs": INT,
            "runs_held": INT,
            "started_at": TS,
            "heartbeat_at": TS,
            "alive": {"type": "boolean"},
            "runs": {"type": "array", "items": {"type": "string"}},
        }
    ),
    "WorkerList": _obj(
        {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Worker"}},
            "total": INT,
        }
    ),
    "RunSummary": _obj(
        {
            "run_id": {"type": "string"},
            "status": {"type": "string"},
            "title": {"type": "string"},
            "nodes": _obj({"total": INT, "completed": INT, "failed": INT, "skipped": INT}),
            "artifacts": {"type": "array", "items": {"type": "string"}},
            "final": {"type": "array", "items": {"type": "string"}},
            "input_tokens": INT,
            "output_tokens": INT,
            "cost_usd": {"type": ["number", "null"]},
            "duration_ms": {"type": "number"},
        }
    ),
    "RunAction": _obj(
        {"run_id": {"type": "string"}, "status": {"type": "string"}, "location": {"type": "string"}}
    ),
    "RunDeleted": _obj(
        {
            "run_id": {"type": "string"},
            "status": {"const": "deleted"},
            "files_bytes": INT,
            "content_bytes": INT,
            "freed_bytes": INT,
            "files_error": STR_NULL,
        }
    ),
    "Node": _obj(
        {
            "id": {"type": "string"},
            "run_id": {"type": "string"},
            "key": {"type": "string"},
            "position": INT,
            "title": {"type": "string"},
            "type": {"type": "string"},
            "role": STR_NULL,
            "status": {"type": "string"},
            "deps": {"type": "array", "items": {"type": "string"}},
            "spec": OBJ,
            "checksum": STR_NULL,
            "attempts": INT,
            "started_at": TS_NULL,
            "ended_at": TS_NULL,
            "error": STR_NULL,
            "input_tokens": INT,
            "output_tokens": INT,
            "cost_usd": {"type": ["number", "null"]},
            "created_at": TS,
        }
    ),
    "NodePage": _page("Node"),
    "Artifact": _obj(
        {
            "id": {"type": "string"},
            "run_id": {"type": "string"},
            "node_id": STR_NULL,
            "type": {"type": "string"},
            "path": {"type": "string"},
            "summary": STR_NULL,
            "sha256": {"type": "string"},
            "size": INT,
            "created_at": TS,
            "download": {"type": "string"},
        }
    ),
    "ArtifactPage": _page("Artifact"),
    "ArtifactDetail": {
        "allOf": [
            {"$ref": "#/components/schemas/Artifact"},
            _obj({"preview": STR_NULL, "truncated": {"type": "boolean"}}),
        ]
    },
    "Event": _obj(
        {
            "id": INT,
            "run_id": {"type": "string"},
            "node_id": STR_NULL,
            "node_key": STR_NULL,
            "type": {"type": "string"},
            "level": {"type": "string", "enum": ["info", "warning", "error"]},
            "payload": OBJ,
            "message": {"type": "string"},
            "request_id": STR_NULL,
            "timestamp": TS,
        }
    ),
    "EventPage": _page("Event"),
    "TaskRequest": _obj(
        {
            "title": {"type": "string", "minLength": 1, "maxLength": MAX_TITLE},
            "task": PLAN,
            "task_spec": PLAN,
            "task_file": {"type": "string", "description": "A file name inside TASKS_DIR."},
            "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
            "acceptance": {
                "type": "array",
                "maxItems": MAX_ITEMS,
                "items": {"type": "string", "maxLength": MAX_ITEM},
            },
            "request_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
            "options": _obj(
                {
                    "dry_run": {"type": "boolean"},
                    "use_supervisor": {"type": "boolean"},
                    "override": {"type": "array", "items": {"type": "string"}},
                    "description": {"type": "string"},
                    "acceptance": {"type": "array", "items": {"type": "string"}},
                    "llm": _obj(
                        {"supervisor": LLM_CHOICE, "manager": LLM_CHOICE, "executor": LLM_CHOICE},
                        [],
                        extra=False,
                    ),
                    "max_cost_usd": {"type": "number", "minimum": 0},
                    "max_tokens": {"type": "integer", "minimum": 1},
                    "resume": {"const": False},
                },
                [],
                extra=False,
            ),
        },
        [],
        extra=False,
    ),
    "TimeZone": {
        "type": "string",
        "enum": list(zone_names()),
        "description": "An IANA time zone name, as listed by the server's zone database.",
    },
    "TaskAccepted": _obj(
        {
            "run_id": {"type": "string"},
            "status": {"const": "accepted"},
            "location": {"type": "string"},
        }
    ),
}

HEADERS = {
    "X-Request-ID": {
        "description": "The request id (echoed on every response).",
        "schema": {"type": "string"},
    },
    "X-Total-Count": {"description": "The total honouring every filter.", "schema": INT},
    "Link": {"description": "RFC 8288 next/prev links.", "schema": {"type": "string"}},
    "Location": {"description": "The run's URL.", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}},
    "WWW-Authenticate": {"description": "How to authenticate.", "schema": {"type": "string"}},
}
PLAN_SOURCES = [
    {"title": "inline plan", "required": ["task"]},
    {"title": "inline plan (task_spec)", "required": ["task_spec"]},
    {"title": "plan file in TASKS_DIR", "required": ["task_file"]},
    {
        "title": "planned by the supervisor",
        "required": ["options"],
        "properties": {
            "options": {
                "required": ["use_supervisor"],
                "properties": {"use_supervisor": {"const": True}},
            }
        },
    },
]
"""POST /tasks takes exactly one plan source: oneOf says so to generated clients."""
SCHEMAS["TaskRequest"]["oneOf"] = PLAN_SOURCES
SCHEMAS["ProviderName"] = PROVIDER_NAME
SCHEMAS["TaskRequest"]["description"] = (
    "Exactly one plan source: task, task_spec, task_file, or options.use_supervisor: true. "
    f"Strings: no NUL or control character but tab and line breaks; a model name at most "
    f"{MAX_MODEL} characters; limits in docs/limits.md."
)
TIMEZONE = {
    "name": "X-Timezone",
    "in": "header",
    "required": False,
    "schema": {"$ref": "#/components/schemas/TimeZone"},
    "description": "An IANA time zone (e.g. Europe/Paris): every timestamp of the response is "
    "shown in it. Invalid: 400. Default: UTC with an offset.",
}


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[{}]", "", path).strip("/").replace("/", "_").replace(".", "_")
    return f"{method.lower()}_{words or 'root'}"


@lru_cache(maxsize=8)
def document(root_path: str = "") -> dict[str, Any]:
    """The OpenAPI document of every declared endpoint. The route modules declare them
    when imported (`crew.api.routes.load()`, which the app factory calls)."""
    if not ENDPOINTS:
        raise RuntimeError("no endpoint declared: call crew.api.routes.load() first")
    PROVIDER_NAME["enum"] = list(provider_names())
    paths: dict[str, Any] = {}
    for ep in ENDPOINTS:
        responses: dict[str, Any] = {}
        for code, reply in sorted(ep.responses.items()):
            headers = {"X-Request-ID": HEADERS["X-Request-ID"]}
            headers.update({h: HEADERS[h] for h in reply.headers})
            if code == 401:
                headers["WWW-Authenticate"] = HEADERS["WWW-Authenticate"]
            if code == 429:
                headers["Retry-After"] = HEADERS["Retry-After"]
            entry: dict[str, Any] = {"description": reply.description, "headers": headers}
            if reply.schema is not None:
                ref = {"$ref": f"#/components/schemas/{reply.schema}"}
                entry["content"] = {reply.media_type: {"schema": ref}}
            elif reply.media_type != "application/json" or code == 200:
                schema = {"type": "string"} if reply.media_type != "application/json" else OBJ
                entry["content"] = {reply.media_type: {"schema": schema}}
            responses[str(code)] = entry
        parameters: list[dict[str, Any]] = [
            {
                "name": p.name,
                "in": p.location,
                "required": p.required,
                "schema": p.schema,
                "description": p.description,
            }
            for p in ep.params
        ]
        if not ep.public:
            parameters.append(TIMEZONE)
        operation: dict[str, Any] = {
            "operationId": _operation_id(ep.method, ep.path),
            "summary": ep.summary,
            "tags": [ep.tag],
            "parameters": parameters,
            "responses": responses,
        }
        if ep.public:
            operation["security"] = []
        if ep.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{ep.body}"}}
                },
            }
        paths.setdefault(ep.path, {})[ep.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "crew API",
            "version": __version__,
            "description": "Runs, nodes, artifacts and events of crew, and POST /tasks "
            "to start runs. Errors: {detail, code, request_id[, errors]}.",
        },
        "servers": [{"url": root_path or "/"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "security": [{"apiKey": []}],
    }
