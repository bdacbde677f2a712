"""The built-in `offline` provider: deterministic answers with no model and no network.

It lets `crew plan` and `crew run` work on a fresh machine and gives tests and benchmarks
a provider whose output depends only on its input. It never guesses from prose: crew's
prompt templates embed a fenced ```json context block (see `context_block`) and the
provider answers from that block and the request's agent role. Every answer says it was
produced offline, so nobody mistakes it for model output.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from crew.llm.base import LLMRequest, LLMResponse, Message, estimate_tokens

CONTEXT_KEY = "crew_context"
"""The key naming the kind of request in a context block: `plan`, `assign`, `execute`."""

_FENCE = re.compile(r"```json[ \t]*\n(.*?)\n```", re.DOTALL)


def context_block(kind: str, payload: Mapping[str, Any]) -> str:
    """Render the fenced context block; keys are sorted so prompts are deterministic.

    It lives in the LLM layer because the provider that reads it may not import the
    agents that write it.
    """
    data = {CONTEXT_KEY: kind, **payload}
    body = json.dumps(data, ensure_ascii=False, sort_keys=True)
    return f"```json\n{body}\n```"


def read_context(messages: Iterable[Message]) -> dict[str, Any] | None:
    """The last context block found in system/user messages, or None."""
    found: dict[str, Any] | None = None
    for message in messages:
        if message.role == "assistant":
            continue
        for match in _FENCE.finditer(message.content):
            try:
                data = json.loads(match.group(1))
            except ValueError:
                continue
            if isinstance(data, dict) and isinstance(data.get(CONTEXT_KEY), str):
                found = data
    return found


_TEXT: dict[str, dict[str, Any]] = {
    "fr": {
        "colon": " : ",
        "research": ["Collecte des sources", "Analyse des exigences", "État de l'art"],
        "research_acceptance": "Au moins trois sources ou faits vérifiables, avec leur origine",
        "context_note": "Contexte",
        "manage": "Coordination de la rédaction",
        "manage_acceptance": "Chaque section a un rôle et un critère de qualité",
        "write": "Rédaction du contenu",
        "review": "Relecture critique",
        "review_acceptance": "Les écarts aux critères d'acceptation sont listés",
        "synthesis": "Synthèse finale",
        "default_acceptance": "Le livrable répond à l'objectif « {title} »",
        "risk": "Sources insuffisantes ou contradictoires",
        "assumption": "Le public visé est non spécialiste",
        "quality": [
            "Chaque livrable coche tous ses critères d'acceptation",
            "Les affirmations s'appuient sur les entrées citées",
        ],
        "integration": "Les rédacteurs s'appuient sur les recherches ; la relecture précède "
        "la synthèse finale.",
        "banner": "Produit hors ligne par le fournisseur `offline` : aucun modèle de langage "
        "n'a été appelé.",
        "goal": "Objectif",
        "deliverable": "Livrable",
        "content": "Contenu",
        "acceptance": "Critères d'acceptation",
        "inputs": "Entrées utilisées",
        "no_inputs": "Aucune (nœud sans dépendance).",
        "truncated": "tronquée",
        "body": "Cette section traite « {title} » pour l'objectif « {goal} », dans le rôle {role}.",
        "synth_body": "Ce document assemble {count} entrée(s) en un livrable unique pour "
        "l'objectif « {goal} ».",
    },
    "en": {
        "colon": ": ",
        "research": ["Collect sources", "Analyse requirements", "Survey the state of the art"],
        "research_acceptance": "At least three verifiable sources or facts, with their origin",
        "context_note": "Context",
        "manage": "Coordinate the writing",
        "manage_acceptance": "Every section has a role and a quality criterion",
        "write": "Write the content",
        "review": "Critical review",
        "review_acceptance": "Gaps against the acceptance criteria are listed",
        "synthesis": "Final synthesis",
        "default_acceptance": "The deliverable meets the goal “{title}”",
        "risk": "Insufficient or contradictory sources",
        "assumption": "The audience is not specialist",
        "quality": [
            "Every deliverable meets all of its acceptance criteria",
            "Claims rely on the cited inputs",
        ],
        "integration": "Writers build on the research; the review comes before the final "
        "synthesis.",
        "banner": "Produced offline by the `offline` provider: no language model was called.",
        "goal": "Goal",
        "deliverable": "Deliverable",
        "content": "Content",
        "acceptance": "Acceptance criteria",
        "inputs": "Inputs used",
        "no_inputs": "None (this node has no dependencies).",
        "truncated": "truncated",
        "body": "This section covers “{title}” for the goal “{goal}”, in the role {role}.",
        "synth_body": "This document combines {count} input(s) into one deliverable for the "
        "goal “{goal}”.",
    },
}


class OfflineProvider:
    """Answers plans, assignments and markdown derived from the request's context block."""

    name = "offline"

    def __init__(self, latency_ms: int = 0) -> None:
        self.latency_ms = latency_ms

    async def complete(self, request: LLMRequest) -> LLMResponse:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)
        text = answer(request)
        prompt = "\n".join(m.content for m in request.messages)
        return LLMResponse(
            text=text,
            model="offline",
            input_tokens=estimate_tokens(prompt),
            output_tokens=estimate_tokens(text),
            latency_ms=float(self.latency_ms),
            finish_reason="stop",
            provider=self.name,
            usage_estimated=True,
        )

    async def aclose(self) -> None:
        return None


def answer(request: LLMRequest) -> str:
    """The answer text for `request`: a pure function of its messages, role and model."""
    context = read_context(request.messages) or {}
    kind = context.get(CONTEXT_KEY)
    role = request.role.lower()
    if kind == "plan" or (kind is None and request.wants_json and role == "supervisor"):
        return _dump(_plan(context, request, _digest(request)))
    if kind == "assign" or (kind is None and request.wants_json):
        return _dump(_assignments(context))
    return _markdown(context, request)


def _digest(request: LLMRequest) -> bytes:
    """A hash of everything the answer may depend on (role, model, messages)."""
    payload = [request.role, request.model, [[m.role, m.content] for m in request.messages]]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).digest()


def _dump(data: Mapping[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)


def _text(context: Mapping[str, Any]) -> dict[str, Any]:
    language = context.get("language")
    return _TEXT[language] if language in _TEXT else _TEXT["fr"]


def _goal(context: Mapping[str, Any], request: LLMRequest) -> dict[str, Any]:
    goal = context.get("goal")
    if isinstance(goal, dict) and isinstance(goal.get("title"), str) and goal["title"].strip():
        return goal
    first_line = request.last_user.strip().splitlines()[0] if request.last_user.strip() else ""
    return {"title": first_line[:80] or "Plan", "description": None, "acceptance": []}


def _plan(context: Mapping[str, Any], request: LLMRequest, digest: bytes) -> dict[str, Any]:
    """A 6-7 node DAG: parallel research, a manage node, writing, review, synthesis."""
    t = _text(context)
    goal = _goal(context, request)
    title = str(goal["title"]).strip()
    acceptance = [str(a) for a in goal.get("acceptance") or [] if str(a).strip()]
    description = goal.get("description")
    research_count = 2 + digest[0] % 2
    nodes: list[dict[str, Any]] = []
    for index in range(research_count):
        notes = [f"{t['context_note']}{t['colon']}{description}"] if description else []
        nodes.append(
            _node(
                f"n{index + 1}",
                f"{t['research'][index]}{t['colon']}{title}",
                "task",
                "Researcher",
                [t["research_acceptance"]],
                [],
                notes=notes,
                risks=[t["risk"]] if index == 0 else [],
            )
        )
    research_ids = [n["id"] for n in nodes]
    manage_id, write_id = f"n{research_count + 1}", f"n{research_count + 2}"
    review_id, synth_id = f"n{research_count + 3}", f"n{research_count + 4}"
    nodes.append(
        _node(
            manage_id,
            t["manage"],
            "manage",
            "Manager_Generic",
            [t["manage_acceptance"]],
            research_ids,
        )
    )
    nodes.append(
        _node(
            write_id,
            f"{t['write']}{t['colon']}{title}",
            "task",
            "Writer_FR",
            acceptance,
            [manage_id],
            assumptions=[t["assumption"]],
        )
    )
    nodes.append(
        _node(
            review_id,
            t["review"],
            "task",
            "Reviewer",
            [t["review_acceptance"]],
            [manage_id, write_id],
        )
    )
    final_acceptance = acceptance or [t["default_acceptance"].format(title=title)]
    nodes.append(
        _node(
            synth_id,
            f"{t['synthesis']}{t['colon']}{title}",
            "synthesis",
            "Writer_FR",
            final_acceptance,
            [write_id, review_id],
        )
    )
    return {"title": title, "decompose": True, "plan": nodes}


def _node(
    key: str,
    title: str,
    node_type: str,
    role: str,
    acceptance: list[str],
    deps: list[str],
    *,
    notes: list[str] | None = None,
    risks: list[str] | None = None,
    assumptions: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "id": key,
        "title": title,
        "type": node_type,
        "suggested_agent_role": role,
        "acceptance": acceptance,
        "deps": deps,
        "risks": risks or [],
        "assumptions": assumptions or [],
        "notes": notes or [],
    }


_KEYWORD_ROLES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("relecture", "review", "revue", "critique", "vérif", "verif"), "Reviewer"),
    (("recherche", "research", "collecte", "collect", "source", "analys", "survey"), "Researcher"),
    (("coordination", "coordinat", "manage", "pilotage"), "Manager_Generic"),
)
_TOOLING = {
    "Researcher": ["sources", "notes"],
    "Reviewer": ["checklist"],
    "Manager_Generic": ["planning"],
}


def _role_for(node: Mapping[str, Any]) -> str:
    suggested = node.get("suggested_agent_role")
    if isinstance(suggested, str) and suggested.strip():
        return suggested.strip()
    title = str(node.get("title", "")).lower()
    for words, role in _KEYWORD_ROLES:
        if any(word in title for word in words):
            return role
    return "Writer_FR"


def _assignments(context: Mapping[str, Any]) -> dict[str, Any]:
    t = _text(context)
    raw_nodes = context.get("nodes")
    nodes = [n for n in raw_nodes if isinstance(n, dict)] if isinstance(raw_nodes, list) else []
    assignments = []
    for node in nodes:
        role = _role_for(node)
        assignments.append(
            {
                "node_id": str(node.get("id")),
                "agent": role,
                "tooling": _TOOLING.get(role, ["markdown"]),
            }
        )
    return {
        "assignments": assignments,
        "quality_checks": list(t["quality"]),
        "integration_notes": t["integration"],
    }


def _markdown(context: Mapping[str, Any], request: LLMRequest) -> str:
    t = _text(context)
    goal = _goal(context, request)
    raw_node = context.get("node")
    node: dict[str, Any] = raw_node if isinstance(raw_node, dict) else {}
    title = str(node.get("title") or goal["title"])
    synthesis = node.get("type") == "synthesis"
    inputs = [i for i in context.get("inputs") or [] if isinstance(i, dict)]
    lines = [f"# {title}", "", f"> {t['banner']}", ""]
    lines += [f"## {t['goal']}", "", str(goal["title"])]
    if goal.get("description"):
        lines += ["", str(goal["description"])]
    heading = t["deliverable"] if synthesis else t["content"]
    if synthesis:
        body = t["synth_body"].format(count=len(inputs), goal=goal["title"])
    else:
        body = t["body"].format(title=title, goal=goal["title"], role=request.role)
    lines += ["", f"## {heading}", "", body]
    for item in inputs:
        lines += ["", f"### {item.get('title') or item.get('key')}", "", f"→ `{item.get('key')}`"]
    criteria = [str(a) for a in node.get("acceptance") or []]
    if synthesis:
        criteria += [str(a) for a in goal.get("acceptance") or [] if str(a) not in criteria]
    lines += ["", f"## {t['acceptance']}", ""]
    lines += [f"- [x] {c}" for c in criteria] or ["- [x] —"]
    lines += ["", f"## {t['inputs']}", ""]
    if not inputs:
        lines.append(t["no_inputs"])
    for item in inputs:
        mark = f" ({t['truncated']})" if item.get("truncated") else ""
        lines.append(f"- `{item.get('key')}` — {item.get('title', '')}{mark}")
    return "\n".join(lines) + "\n"
