"""Artifacts: lists per run and per node, one artifact with a preview, the file itself."""

from __future__ import annotations

import mimetypes
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from crew.api.errors import ApiError
from crew.api.params import Query, localize, page_response, render, tz_of
from crew.api.spec import (
    Reply,
    endpoint,
    item_replies,
    limit_offset,
    order_by,
    page_replies,
    path_id,
    replies,
    text_param,
)
from crew.api.state import api_state, found, read_store
from crew.engine.views import jsonable
from crew.store.reads import ReadStore
from crew.store.records import ArtifactRecord

ARTIFACT_ORDER = ("created_at", "type", "path", "size")
PREVIEW_CHARS = 2000
CONTENT_TYPES = {
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


def artifact_view(artifact: ArtifactRecord, zone: Any) -> dict[str, Any]:
    data = jsonable(localize(artifact, zone))
    data.pop("content", None)
    data["download"] = f"/artifacts/{artifact.id}/download"
    return data


LIST_PARAMS = [
    text_param("type", "Only artifacts of this type (markdown, sidecar, manager, ...)."),
    order_by(ARTIFACT_ORDER, "created_at"),
    *limit_offset(),
]
LIST_REPLIES = page_replies("artifacts", "ArtifactPage")


async def _list(request: Request, **owner: str) -> Response:
    q = Query(request, ("type", "order_by", "limit", "offset"))
    type_ = q.text("type")
    orders = q.order(ARTIFACT_ORDER, "created_at")
    limit, offset = q.page()
    q.check()
    reads = await read_store(request)
    page = await reads.list_artifacts(
        **owner, type=type_, orders=orders, limit=limit, offset=offset
    )
    if page is None:
        what, value = next(iter(owner.items()))
        raise ApiError.missing(what.removesuffix("_id"), value)
    zone = tz_of(request)
    items = [artifact_view(a, zone) for a in page.items]
    return page_response(request, items, page.total, limit, offset)


@endpoint(
    "GET",
    "/runs/{run_id}/artifacts",
    summary="List a run's artifacts",
    tag="artifacts",
    params=[path_id("run_id", "run"), *LIST_PARAMS],
    responses=LIST_REPLIES,
)
async def list_run_artifacts(request: Request) -> Response:
    return await _list(request, run_id=request.path_params["run_id"])


@endpoint(
    "GET",
    "/nodes/{node_id}/artifacts",
    summary="List a node's artifacts",
    tag="artifacts",
    params=[path_id("node_id", "node"), *LIST_PARAMS],
    responses=LIST_REPLIES,
)
async def list_node_artifacts(request: Request) -> Response:
    return await _list(request, node_id=request.path_params["node_id"])


async def _artifact(request: Request) -> ArtifactRecord:
    Query(request, ()).check()
    return await found(request, "artifact", ReadStore.get_artifact)


@endpoint(
    "GET",
    "/artifacts/{artifact_id}",
    summary="Show an artifact with a preview",
    tag="artifacts",
    params=[path_id("artifact_id", "artifact")],
    responses=item_replies("The artifact.", "ArtifactDetail"),
)
async def get_artifact(request: Request) -> Response:
    artifact = await _artifact(request)
    data = artifact_view(artifact, tz_of(request))
    content = artifact.content
    data["preview"] = content[:PREVIEW_CHARS] if content is not None else None
    data["truncated"] = content is not None and len(content) > PREVIEW_CHARS
    return render(data)


def file_under(root: Path, relative: str) -> Path | None:
    """The regular file `relative` names under `root`, or None when there is none.

    Resolved real paths, not string prefixes: `..`, absolute paths and symlinks cannot
    leave `root`. A path no file can have (a NUL, a name too long, a symlink loop) is
    None too: for the client it is simply not there, never a server error.
    """
    if not relative or "\x00" in relative:
        return None
    try:
        base = root.resolve()
        real = (base / relative).resolve()
        if real.is_relative_to(base) and real.is_file():
            return real
    except (OSError, ValueError, RuntimeError):
        pass
    return None


@endpoint(
    "GET",
    "/artifacts/{artifact_id}/download",
    summary="Download an artifact's file",
    tag="artifacts",
    params=[path_id("artifact_id", "artifact")],
    responses=replies(
        {200: Reply("The file, with its content type.", None, media_type="*/*")}, 400, 401, 404, 503
    ),
)
async def download_artifact(request: Request) -> Response:
    """The database's copy when it has one: it is the truth, and the file may live on
    another machine (a worker with its own RUNS_ROOT). Rows without content (written by
    an older crew) are served from the file under RUNS_ROOT, if it is there."""
    artifact = await _artifact(request)
    name = PurePosixPath(artifact.path).name or "artifact"
    if artifact.content is not None and _could_be_under_root(artifact.path):
        return Response(
            artifact.content.encode("utf-8"),
            media_type=_media_type(name),
            headers={"Content-Disposition": _attachment(name)},
        )
    real = file_under(Path(api_state(request).settings.runs_root), artifact.path)
    if real is None:
        raise ApiError(404, "the artifact's file is not available", code="not_found")
    return FileResponse(real, media_type=_media_type(real.name), filename=real.name)


def _could_be_under_root(relative: str) -> bool:
    """Whether a stored path names a place a file under RUNS_ROOT could have: a row whose
    path could never be a file there is answered like a missing file (404)."""
    if not relative or "\x00" in relative or "\\" in relative:
        return False
    path = PurePosixPath(relative)
    return not path.is_absolute() and ".." not in path.parts and path.name not in ("", ".")


def _media_type(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    known = CONTENT_TYPES.get(suffix)
    return known or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _attachment(name: str) -> str:
    """A Content-Disposition naming the file; any character is percent-encoded, so a
    stored path can never inject a header."""
    return f"attachment; filename*=utf-8''{quote(name, safe='')}"
