"""Idempotency keys of `POST /tasks`: a repeated request finds the run it started.

The key is stored (as a digest that also names the API key, so two clients cannot see
each other's runs) in a unique column of `runs`, so the guarantee survives restarts and
holds across server processes: when two identical requests race, the unique index lets
exactly one run keep the key and the loser's run is deleted before anything executes it.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from crew.store.errors import unavailable_on_failure
from crew.store.models import runs_table
from crew.store.repository import Repository


async def find_run(repo: Repository, digest: str) -> str | None:
    """The id of the run started with this key digest, if any."""
    c = runs_table.c
    with unavailable_on_failure(repo.engine.url.render_as_string(hide_password=True)):
        async with repo.engine.connect() as conn:
            row = (await conn.execute(select(c.id).where(c.idempotency_key == digest))).first()
    return None if row is None else str(row[0])


async def attach(repo: Repository, run_id: str, digest: str) -> str:
    """Give `run_id` the key; returns the run that holds it (another one if it won a race).

    A losing run is deleted: it was created a moment ago, never executed, and the
    caller answers with the winner's id instead.
    """
    c = runs_table.c
    try:
        async with repo.batch() as writer:
            await writer.update_run(run_id, idempotency_key=digest)
    except IntegrityError:
        winner = await find_run(repo, digest)
        if winner is None:  # pragma: no cover - the winner was deleted meanwhile
            raise
        async with repo.engine.begin() as conn:
            await conn.execute(delete(runs_table).where(c.id == run_id))
        return winner
    return run_id
