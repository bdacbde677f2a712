"""Persistence: SQLModel tables, engines, the repository (every query) and migrations.

This package's `__init__` stays import-free on purpose: commands that never touch the
database (`crew --help`, `crew plan`) must not pay for SQLAlchemy. Import the submodules
(`crew.store.database`, `crew.store.repository`, ...) where they are used.
"""

from __future__ import annotations

# The Alembic revision the code's models correspond to. Opening a repository compares it
# with the `alembic_version` row so a normal command never has to load Alembic's script
# directory; a test keeps it equal to the real head of migrations/versions.
SCHEMA_HEAD = "0003"
