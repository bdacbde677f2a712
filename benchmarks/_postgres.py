"""The PostgreSQL database a benchmark may wipe: an empty `public` schema, migrated to
head (crew never migrates PostgreSQL by itself)."""

from __future__ import annotations

import asyncio


async def wipe_postgres(url: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    from crew.store import migrate

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DROP SCHEMA IF EXISTS public CASCADE")
        await connection.execute("CREATE SCHEMA public")
    finally:
        await connection.close()
    await asyncio.to_thread(migrate.upgrade, url)
