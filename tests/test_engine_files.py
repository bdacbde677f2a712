"""Node files: where they go, and how they are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from crew.engine.files import RunFiles


def test_node_files_stay_in_their_folder(tmp_path: Path) -> None:
    files = RunFiles(tmp_path, "run-1")
    assert files.artifact("a.b") == tmp_path / "run-1" / "nodes" / "a.b" / "artifact_a.b.md"
    assert files.artifact_sidecar("a") == tmp_path / "run-1" / "nodes" / "a" / "artifact_a.llm.json"
    for bad in ("..", ".", "a/b", ""):
        with pytest.raises(ValueError):
            files.node_folder(bad)
    written = files.write_text(files.artifact("a"), "# hi\n")
    assert written.relative == "run-1/nodes/a/artifact_a.md"
    assert written.path.read_text() == "# hi\n" and written.size == 5
    assert [p.name for p in written.path.parent.iterdir()] == ["artifact_a.md"]  # no temp left
