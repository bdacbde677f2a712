"""The live view of a run on a terminal: one row per node, and overall progress.

It is fed by the engine's event listener (in-process, after each commit), so it shows
exactly what has been stored, without polling the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from crew.engine.journal import EngineEvent


@dataclass(slots=True)
class _Row:
    key: str
    title: str
    role: str | None
    status: str = "pending"
    started: float | None = None
    ended: float | None = None
    tokens: int = 0


class LiveView:
    """A rich Live table; `listener` is the engine callback, `stop` ends the display."""

    def __init__(self, title: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.rows: dict[str, _Row] = {}
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)
        self.live.update(self._render())
        self.live.start()

    def listener(self, event: EngineEvent) -> None:
        payload = event.payload
        now = time.monotonic()
        if event.type.value == "PLAN_CREATED":
            for node in payload.get("nodes", []):
                self.rows[node["key"]] = _Row(node["key"], node["title"], node.get("role"))
        row = self.rows.get(event.node_key or "")
        if row is not None:
            kind = event.type.value
            if kind == "NODE_STARTED":
                row.status, row.started, row.ended = "running", now, None
                row.role = payload.get("role") or row.role
            elif kind == "NODE_RETRYING":
                row.status = "retrying"
            elif kind == "NODE_COMPLETED":
                row.status, row.ended = "completed", now
                row.role = payload.get("role") or row.role
                usage = payload.get("usage") or {}
                row.tokens = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
            elif kind == "NODE_FAILED":
                row.status, row.ended = "failed", now
            elif kind == "NODE_SKIPPED":
                row.status = "skipped"
        if event.type.value == "MANAGER_ASSIGNED":
            for key, role in (payload.get("assignments") or {}).items():
                if key in self.rows:
                    self.rows[key].role = role
        self.live.update(self._render())

    def stop(self) -> None:
        self.live.update(self._render())
        self.live.stop()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        table = Table(title=self.title, expand=False)
        for column in ("node", "status", "role", "elapsed", "tokens", "title"):
            table.add_column(column)
        styles = {
            "completed": "green",
            "failed": "red",
            "running": "cyan",
            "retrying": "yellow",
            "skipped": "dim",
        }
        now = time.monotonic()
        for row in self.rows.values():
            elapsed = ""
            if row.started is not None:
                elapsed = f"{(row.ended or now) - row.started:.1f}s"
            style = styles.get(row.status, "")
            table.add_row(
                row.key,
                f"[{style}]{row.status}[/]" if style else row.status,
                row.role or "-",
                elapsed,
                str(row.tokens or ""),
                row.title,
            )
        done = sum(1 for r in self.rows.values() if r.status in {"completed", "failed", "skipped"})
        total = max(1, len(self.rows))
        bar = ProgressBar(total=total, completed=done, width=40)
        return Group(table, bar, f"{done}/{len(self.rows)} nodes done")
