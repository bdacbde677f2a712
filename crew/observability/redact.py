"""Removing secrets from text that leaves the process (log lines, error reports).

Two layers: the secret values crew is configured with (API_KEY's keys, OPENAI_API_KEY,
the password of DATABASE_URL, the Sentry DSN's key) are replaced wherever they appear,
and well-known shapes (`Authorization: Bearer ...`, `X-API-Key: ...`, `?api_key=...`,
`scheme://user:password@`) are masked even when the value is not one crew knows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "[redacted]"
MIN_SECRET_LEN = 4
"""Shorter values are not treated as secrets: masking "ab" everywhere would garble text."""

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer\s+|basic\s+)?[^\s\"',;]+"),
        rf"\1\2{MASK}",
    ),
    (re.compile(r"(?i)(x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)([?&](?:api_key|apikey|key|token|access_token)=)[^&\s\"']+"), rf"\1{MASK}"),
    (re.compile(r"(?i)((?:openai_)?api_key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"), f"Bearer {MASK}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), MASK),
    (re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), rf"\1{MASK}@"),
)


def secret_values(settings: Any) -> tuple[str, ...]:
    """The configured values that must never be shown, longest first."""
    values: list[str] = list(getattr(settings, "api_keys", ()) or ())
    for name in ("openai_api_key",):
        value = getattr(settings, name, None)
        if value:
            values.append(value)
    _, password = _userinfo(getattr(settings, "database_url", None))
    if password:
        values.append(password)
    dsn_key, dsn_secret = _userinfo(getattr(settings, "sentry_dsn", None))
    values.extend(v for v in (dsn_key, dsn_secret) if v)
    unique = {v for v in values if v and len(v) >= MIN_SECRET_LEN}
    return tuple(sorted(unique, key=len, reverse=True))


def _userinfo(url: str | None) -> tuple[str, str]:
    """(user, password) of a URL's userinfo; empty strings when absent."""
    if not url or "://" not in url:
        return "", ""
    rest = url.split("://", 1)[1].split("/", 1)[0]
    if "@" not in rest:
        return "", ""
    user, _, password = rest.rsplit("@", 1)[0].partition(":")
    return user, password


class Redactor:
    """Masks the given secret values and the well-known secret shapes in a string."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(s for s in secrets if s and len(s) >= MIN_SECRET_LEN)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def deep(self, value: Any) -> Any:
        """The same for every string inside dicts, lists and tuples (an error report)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {key: self.deep(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(item) for item in value]
        return value
