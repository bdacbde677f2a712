"""one artifact row per file: a unique (run_id, path) index

A node that runs again (on resume, or with --override) overwrites its files. Before this
revision its new artifact rows were added beside the old ones, which then described
content no longer on disk. The upgrade keeps the newest row of each file and makes the
pair unique, so a writer replaces the row instead.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 18:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The newest row of a file wins; ids break ties of rows written in the same instant.
_DELETE_OLDER_DUPLICATES = """
DELETE FROM artifacts WHERE id IN (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER (
            PARTITION BY run_id, path ORDER BY created_at DESC, id DESC
        ) AS newness
        FROM artifacts
    ) AS ranked
    WHERE newness > 1
)
"""


def upgrade() -> None:
    op.execute(_DELETE_OLDER_DUPLICATES)
    op.create_index("ux_artifacts_run_id_path", "artifacts", ["run_id", "path"], unique=True)


def downgrade() -> None:
    # The rows the upgrade removed described overwritten files; they are not restored.
    op.drop_index("ux_artifacts_run_id_path", table_name="artifacts")
