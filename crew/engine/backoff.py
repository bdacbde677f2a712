"""Delays between a node's attempts: exponential from a base, with jitter.

Jitter spreads retries of nodes that failed together (one provider outage hits many
nodes at once) so they do not all come back in the same instant.
"""

from __future__ import annotations

import random

_RANDOM = random.Random()


def retry_delay(base_s: float, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1 = first retry): in [0.5, 1.0] x base x 2^(n-1)."""
    ceiling: float = base_s * (2 ** (attempt - 1))
    return ceiling * (0.5 + 0.5 * (rng or _RANDOM).random())
