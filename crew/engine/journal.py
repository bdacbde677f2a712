"""Events: built by the engine, committed with the state change they describe.

An event and the row changes it reports go into the same queued transaction, so a
follower never sees NODE_COMPLETED for a node whose row still says `running`, and a
crash never leaves a state change without its event. Listeners (the CLI's live view)
are told only after the commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from crew.domain.clock import utcnow
from crew.domain.events import EventLevel, EventType
from crew.engine.write_queue import WriteQueue
from crew.store.records import NewEvent

log = logging.getLogger("crew.engine")


@dataclass(frozen=True, slots=True)
class EngineEvent:
    run_id: str
    type: EventType
    level: EventLevel
    message: str
    payload: dict[str, Any]
    node_id: str | None = None
    node_key: str | None = None
    request_id: str | None = None
    timestamp: datetime = field(default_factory=utcnow)
    id: int | None = None


EventListener = Callable[[EngineEvent], None]
Apply = Callable[[Any], Awaitable[Any]]


class Journal:
    def __init__(
        self,
        *,
        run_id: str,
        request_id: str | None,
        queue: WriteQueue,
        listeners: Sequence[EventListener] = (),
    ) -> None:
        self.run_id = run_id
        self.request_id = request_id
        self.queue = queue
        self.listeners = list(listeners)

    def event(
        self,
        event_type: EventType,
        message: str,
        /,
        *,
        level: EventLevel = EventLevel.INFO,
        node_id: str | None = None,
        node_key: str | None = None,
        **payload: Any,
    ) -> EngineEvent:
        body: dict[str, Any] = {"run_id": self.run_id}
        if node_key is not None:
            body["node_key"] = node_key
        if self.request_id is not None:
            body["request_id"] = self.request_id
        body.update(payload)
        return EngineEvent(
            run_id=self.run_id,
            type=event_type,
            level=level,
            message=message,
            payload=body,
            node_id=node_id,
            node_key=node_key,
            request_id=self.request_id,
        )

    async def commit(self, *events: EngineEvent, apply: Apply | None = None) -> Any:
        """Apply `apply(writer)` and insert `events` in one transaction; return apply's value."""
        return await self._delivered(events, self._enqueue(events, apply))

    def commit_soon(self, *events: EngineEvent, apply: Apply | None = None) -> asyncio.Task[Any]:
        """Queue the same transaction now and commit it in the background.

        Its place in the commit order is taken now: anything committed later lands
        after it. Await the task before recording what follows from this change.
        """
        return asyncio.ensure_future(self._delivered(events, self._enqueue(events, apply)))

    def _enqueue(self, events: Sequence[EngineEvent], apply: Apply | None) -> asyncio.Future[Any]:
        rows = [
            NewEvent(
                run_id=e.run_id,
                type=e.type.value,
                level=e.level.value,
                message=e.message,
                payload=e.payload,
                node_id=e.node_id,
                node_key=e.node_key,
                request_id=e.request_id,
                timestamp=e.timestamp,
            )
            for e in events
        ]

        async def operation(writer: Any) -> tuple[Any, list[int]]:
            result = await apply(writer) if apply is not None else None
            ids: list[int] = await writer.add_events(rows)
            return result, ids

        return self.queue.enqueue(operation)

    async def _delivered(
        self, events: Sequence[EngineEvent], committed: asyncio.Future[Any]
    ) -> Any:
        """Wait for the commit, then tell the listeners (with the events' ids)."""
        result, ids = await committed
        if self.listeners:
            for event, event_id in zip(events, ids, strict=True):
                committed_event = replace(event, id=event_id)
                for listener in self.listeners:
                    try:
                        listener(committed_event)
                    except Exception:
                        self._drop(listener)
        return result

    def _drop(self, listener: EventListener) -> None:
        """A listener only watches the run: when it breaks, the run goes on without it."""
        log.exception("an event listener of run %s failed; it is told nothing more", self.run_id)
        self.listeners = [kept for kept in self.listeners if kept is not listener]
