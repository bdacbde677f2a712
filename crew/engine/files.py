"""Where a run's files live (DESIGN §4) and how they are written.

Every file is written to a temporary name in the same folder and renamed over the
target, so a reader never sees half a file and a crash leaves either the old or the
new content. Node keys are validated by the plan before they get here, and paths are
still checked to stay inside the run folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from crew.domain.errors import CrewError
from crew.domain.plan import is_valid_key
from crew.store.records import NewArtifact


@dataclass(frozen=True, slots=True)
class WrittenFile:
    path: Path
    relative: str
    """Relative to RUNS_ROOT, with forward slashes: what the database stores."""
    sha256: str
    size: int
    text: str = ""
    """The content: the database keeps it too, as the truth any machine can read."""


class ArtifactTooLargeError(CrewError):
    """An output over ARTIFACT_MAX_BYTES: refused (the node fails), never truncated."""


@dataclass(frozen=True, slots=True)
class RunFiles:
    runs_root: Path
    run_id: str
    max_bytes: int | None = None
    """ARTIFACT_MAX_BYTES: a larger node output is refused with ArtifactTooLargeError."""

    @property
    def folder(self) -> Path:
        return self.runs_root / self.run_id

    def node_folder(self, key: str) -> Path:
        if not is_valid_key(key):  # the plan validated it; this guards every other caller
            raise ValueError(f"invalid node key for a folder name: {key!r}")
        return _node_folder(self.runs_root, self.run_id, key)

    def plan(self) -> Path:
        return self.folder / "plan.json"

    def summary(self) -> Path:
        return self.folder / "summary.json"

    def supervisor_sidecar(self) -> Path:
        return self.folder / "supervisor.llm.json"

    def artifact(self, key: str) -> Path:
        return self.node_folder(key) / f"artifact_{key}.md"

    def artifact_sidecar(self, key: str) -> Path:
        return self.node_folder(key) / f"artifact_{key}.llm.json"

    def manager_answer(self, key: str) -> Path:
        return self.node_folder(key) / f"manager_{key}.json"

    def manager_sidecar(self, key: str) -> Path:
        return self.node_folder(key) / f"manager_{key}.llm.json"

    def prepare(self, path: Path, text: str) -> WrittenFile:
        """Describe a file to write (path, hash, size, content) without touching the disk.

        An executor records a file in the database first (a fenced commit) and writes it
        after: a process that lost its run's lease never gets to overwrite the new
        owner's files, and a crash in between is repaired from the database on resume.
        """
        data = text.encode("utf-8")
        if self.max_bytes is not None and len(data) > self.max_bytes and _is_output(path):
            relative = path.relative_to(self.runs_root).as_posix()
            raise ArtifactTooLargeError(
                f"{relative} would be {len(data):,} bytes, over ARTIFACT_MAX_BYTES "
                f"({self.max_bytes:,}); raise the limit or ask for a shorter output"
            )
        return WrittenFile(
            path=path,
            relative=path.relative_to(self.runs_root).as_posix(),
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            text=text,
        )

    def write_text(self, path: Path, text: str) -> WrittenFile:
        written = self.prepare(path, text)
        write_atomic(path, text.encode("utf-8"))
        return written

    async def write_prepared(self, files: Sequence[WrittenFile]) -> None:
        """Write prepared files in a worker thread.

        Creating files costs the filesystem far more than the bytes do; in a thread it
        overlaps with the database commits and with other nodes' writes instead of
        stalling the event loop that schedules every node.
        """

        def write_all() -> None:
            for prepared in files:
                write_atomic(prepared.path, prepared.text.encode("utf-8"))

        await asyncio.get_running_loop().run_in_executor(_file_writers(), write_all)

    def remove_stale_temporaries(self) -> int:
        """Delete the `.<name>.<pid>.tmp` files of writers that died mid-write (see
        `write_atomic`); call only while holding the run's lease. Returns how many."""
        removed = 0
        if not self.folder.is_dir():
            return 0
        for path in self.folder.rglob(".*.tmp"):
            pid = path.name.rsplit(".", 2)[-2]
            if pid.isdigit() and int(pid) != os.getpid() and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def restore(self, relative: str, content: str) -> bool:
        """Write a file back from its database copy if it is missing or differs.

        A run continued on another machine (its own RUNS_ROOT), or whose file someone
        deleted, gets its local copy back; returns True when something was written.
        """
        # A lexical check, not resolve(): a resume restores thousands of files, and the
        # rows are the engine's own (node keys cannot hold a separator or `..`).
        parts = PurePosixPath(relative).parts
        if not parts or parts[0] != self.run_id or ".." in parts or "\x00" in relative:
            raise ValueError(f"artifact path {relative!r} is outside run {self.run_id}")
        path = self.runs_root / relative
        data = content.encode("utf-8")
        try:
            if path.read_bytes() == data:
                return False
        except OSError:
            pass
        write_atomic(path, data)
        return True

    def write_json(self, path: Path, payload: Any) -> WrittenFile:
        return self.write_text(path, to_json_text(payload))


@lru_cache(maxsize=4096)
def _node_folder(runs_root: Path, run_id: str, key: str) -> Path:
    # Path joins parse their parts each time; a node's folder is asked for several
    # times per node (artifact, sidecar, relative paths).
    return runs_root / run_id / "nodes" / key


_FILE_WRITERS: ThreadPoolExecutor | None = None
FILE_WRITER_THREADS = 4
"""File creation waits on the filesystem, not the CPU: more threads than cores keep
several creations in flight, which is what makes a wide run's writes overlap."""


def _file_writers() -> ThreadPoolExecutor:
    global _FILE_WRITERS
    if _FILE_WRITERS is None:
        _FILE_WRITERS = ThreadPoolExecutor(FILE_WRITER_THREADS, thread_name_prefix="crew-files")
    return _FILE_WRITERS


def artifact_row(
    run_id: str,
    node_id: str | None,
    type: str,
    written: WrittenFile,
    *,
    content: str | None = None,
    summary: str | None = None,
) -> NewArtifact:
    """The database row describing a file just written, with its content."""
    return NewArtifact(
        run_id=run_id,
        node_id=node_id,
        type=type,
        path=written.relative,
        # The file's own text when we have it: the row must restore the exact file.
        content=written.text or content,
        summary=summary,
        sha256=written.sha256,
        size=written.size,
    )


def to_json_text(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, indent=2) + "\n"


def _is_output(path: Path) -> bool:
    """A node's answer (markdown, manager assignment): what ARTIFACT_MAX_BYTES limits.
    The engine's own records (sidecars, plan, summary) are bounded by construction."""
    return path.parent.parent.name == "nodes" and not path.name.endswith(".llm.json")


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename.

    The temporary name is fixed per process and file (one executor owns a run, node keys
    are unique), which avoids the random-name retries of a general temp file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
