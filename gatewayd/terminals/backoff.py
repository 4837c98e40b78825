"""Retry delays as a pure function: capped exponential backoff with full jitter."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_s(attempt: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before retry number `attempt` (0-based): uniform in [0, min(cap_s, base_s * 2**attempt)]."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), 60))
    return max(0.0, rand() * ceiling)
