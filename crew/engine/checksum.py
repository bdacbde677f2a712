"""The resume checksum of a node.

A completed node is reused on resume only when everything that shaped its output is
unchanged: its whole spec (title, acceptance, notes, risks, assumptions, type), the role
that ran it, the resolved LLM settings, the prompt templates' version, and the hashes of
its dependencies' outputs. Any change there means the old output is stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any


def node_checksum(
    *,
    spec: Mapping[str, Any],
    role: str | None,
    llm: Mapping[str, Any],
    template_version: str,
    dependency_hashes: Sequence[str],
) -> str:
    material = {
        "spec": spec,
        "role": role,
        "llm": llm,
        "templates": template_version,
        "deps": list(dependency_hashes),
    }
    encoded = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()
