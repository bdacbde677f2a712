"""A run's execution options: chosen once, stored on the run, read back on resume.

They live in the run row (JSON) so that `crew run --resume` in another process, or the
API's resume endpoint, executes with what the run was started with, unless the resuming
caller overrides them explicitly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from crew.domain.plan import LLMSpec
from crew.domain.vocabulary import ROLE_KINDS
from crew.settings import Settings

DEFAULT_NODE_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    max_concurrency: int = 4
    retries: int = 2
    retry_base_delay: float = 0.5
    node_timeout_s: float = DEFAULT_NODE_TIMEOUT_S
    dry_run: bool = False
    use_supervisor: bool = False
    rerun: tuple[str, ...] = ()
    """Node keys forced to run again on resume."""
    llm: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per role kind (`executor`, `manager`, ...) LLM overrides from CLI flags: they beat
    a plan node's own `llm`."""
    request_llm: dict[str, Any] = field(default_factory=dict)
    """LLM overrides of the request that created the run (`POST /tasks` `options.llm`):
    below a node's own `llm`. Either one LLM object for every role kind, or an object
    per role kind (`{"executor": {...}, "manager": {...}}`)."""
    max_cost_usd: float | None = None
    max_tokens: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> RunOptions:
        base = cls(
            max_concurrency=settings.max_concurrency,
            retries=settings.node_retries,
            retry_base_delay=settings.retry_base_delay,
            node_timeout_s=settings.node_timeout_s or DEFAULT_NODE_TIMEOUT_S,
            max_cost_usd=settings.run_max_cost_usd,
            max_tokens=settings.run_max_tokens,
        )
        return replace(base, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunOptions:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        if "overrides" in values:  # written by crews before the rename
            values.setdefault("rerun", values.pop("overrides"))
        if "rerun" in values:
            values["rerun"] = tuple(values["rerun"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rerun"] = list(self.rerun)
        return data

    def llm_override(self, role_kind: str) -> LLMSpec | None:
        """The CLI layer for `role_kind`."""
        return _spec(self.llm.get(role_kind))

    def request_override(self, role_kind: str) -> LLMSpec | None:
        """The request layer for `role_kind`."""
        data = self.request_llm
        if any(kind in data for kind in ROLE_KINDS):
            return _spec(data.get(role_kind))
        return _spec(data)

    def llm_layers(
        self, role_kind: str, node_llm: LLMSpec | None = None
    ) -> tuple[LLMSpec | None, LLMSpec | None, LLMSpec | None]:
        """The override layers in precedence order: CLI flags, the node, the request
        (resolve_llm's `cli`, `node`, `request`)."""
        return self.llm_override(role_kind), node_llm, self.request_override(role_kind)


def _spec(spec: Any) -> LLMSpec | None:
    if not isinstance(spec, dict) or not spec:
        return None
    return LLMSpec(
        provider=spec.get("provider"),
        model=spec.get("model"),
        temperature=spec.get("temperature"),
        max_tokens=spec.get("max_tokens"),
        timeout_s=spec.get("timeout_s"),
    )
