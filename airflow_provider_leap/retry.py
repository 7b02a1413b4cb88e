"""Retry decisions: which failures are worth another try, and how long to wait (pure functions
over a frozen policy, so the rules are tested without a server or a clock)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


def is_retryable_status(status: int) -> bool:
    """429 and every 5xx are transient; any other 4xx is the caller's to fix."""
    return status == 429 or 500 <= status < 600


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date. None when
    absent, unreadable, negative, infinite or past: the caller then falls back to its backoff."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded both in attempts and in total waiting time.

    ``max_retries`` counts retries after the first attempt. ``max_wait`` bounds the sum of the
    waits between the attempts of one request (one ``Retry-After`` longer than what is left ends
    the retries at once): each request of a paging run has its own budget."""

    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    max_wait: float = 300.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        for name in ("backoff_base", "backoff_cap", "max_wait"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Wait before retry ``retry_number`` (1-based): base * 2^(n-1), capped, minus jitter."""
        delay = min(self.backoff_cap, self.backoff_base * 2.0 ** (retry_number - 1))
        return delay * (1 - self.jitter * rng.random())

    def next_wait(
        self, retry_number: int, waited: float, rng: random.Random, retry_after: float | None = None
    ) -> float | None:
        """Seconds to wait before retry ``retry_number`` (``Retry-After`` wins over the backoff),
        or None when the budget is spent; ``waited``: what this request's retries waited so far."""
        if retry_number > self.max_retries:
            return None
        delay = retry_after if retry_after is not None else self.backoff(retry_number, rng)
        return None if waited + delay > self.max_wait else delay

    def give_up_reason(self, retry_number: int, waited: float, retry_after: float | None) -> str:
        """Why ``next_wait`` said no, in words that name the setting to change."""
        if retry_number > self.max_retries:
            return f"max_retries={self.max_retries} spent"
        left = max(self.max_wait - waited, 0.0)
        if retry_after is not None:
            return (
                f"Leap asked to wait {retry_after:g} s (Retry-After), more than the {left:g} s "
                f"left of max_retry_wait={self.max_wait:g} s; raise max_retry_wait to wait it out"
            )
        return f"the next wait would pass max_retry_wait={self.max_wait:g} s"
