"""Faults the Leap emulator can inject, scheduled deterministically or drawn from a seeded RNG.

Which requests can get a fault: only requests that would otherwise succeed, i.e. to a known
endpoint, with a valid API key and valid parameters. A 401/403/404/405/400 is never replaced by a
fault, so a client bug (a bad key, a mis-encoded page token) always shows as itself and can't hide
behind a retryable 503, and a scheduled fault is never used up by a request that fails anyway.
Counting ("the next N", "every Nth", chaos draws) is over those eligible requests only.

When several schedules match one request the first wins, in this order: outage, ``fail_next``,
``on_page``, ``every``, chaos. The chaos RNG draws for every eligible request, whether or not an
earlier schedule won, so a chaos run replays identically for a given seed and request sequence.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum


class FaultKind(str, Enum):
    """What the server does instead of (or on top of) its normal answer."""

    RATE_LIMIT = "rate-limit"  # 429 with Retry-After (seconds or HTTP-date; omitted if None)
    SERVER_ERROR = "server-error"  # 500 whose body is a plain JSON string, as Leap documents
    BAD_GATEWAY = "bad-gateway"  # 502 with a JSON error body
    UNAVAILABLE = "unavailable"  # 503 with a JSON error body (also what an outage answers)
    SLOW = "slow"  # sleep ``delay`` seconds, then the normal answer
    MALFORMED = "malformed"  # 200 whose JSON body is cut off half-way
    REPEAT_TOKEN = "repeat-token"  # normal page, but the next-page token points at this page again
    RESET = "reset"  # close the TCP connection (RST) without an answer

    @classmethod
    def parse(cls, text: str | FaultKind) -> FaultKind:
        """Accept the value (``rate-limit``), the name (``RATE_LIMIT``) or a status (``429``)."""
        if isinstance(text, FaultKind):
            return text
        key = text.strip().lower().replace("_", "-")
        aliases = {"429": cls.RATE_LIMIT, "500": cls.SERVER_ERROR, "502": cls.BAD_GATEWAY}
        aliases |= {"503": cls.UNAVAILABLE, "outage": cls.UNAVAILABLE, "timeout": cls.SLOW}
        if key in aliases:
            return aliases[key]
        try:
            return cls(key)
        except ValueError:
            choices = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown fault kind {text!r}; choose from {choices}") from None


STATUS_BY_KIND: dict[FaultKind, int] = {
    FaultKind.RATE_LIMIT: 429,
    FaultKind.SERVER_ERROR: 500,
    FaultKind.BAD_GATEWAY: 502,
    FaultKind.UNAVAILABLE: 503,
}


@dataclass(frozen=True)
class Fault:
    """One fault and its parameters; ``body``/``content_type`` override an error answer's body."""

    kind: FaultKind
    retry_after: int | None = 1
    retry_after_http_date: bool = False
    delay: float = 1.0
    body: bytes | None = None
    content_type: str | None = None

    @property
    def status(self) -> int | None:
        """The HTTP status this fault answers with itself; None when the normal answer goes out."""
        return STATUS_BY_KIND.get(self.kind)


FaultLike = Fault | FaultKind | str

# Transient faults a well-behaved client is expected to retry through.
DEFAULT_CHAOS_KINDS: tuple[FaultKind, ...] = (
    FaultKind.RATE_LIMIT,
    FaultKind.SERVER_ERROR,
    FaultKind.BAD_GATEWAY,
    FaultKind.UNAVAILABLE,
    FaultKind.RESET,
)


@dataclass
class _PageRule:
    page: int
    fault: Fault
    path: str | None
    remaining: int | None


@dataclass
class _EveryRule:
    nth: int
    fault: Fault
    seen: int = 0


class Faults:
    """Thread-safe fault schedule of one emulator; adjust it on a running server at any time.

    Plain kinds (``"429"``, ``FaultKind.SLOW``) get this object's defaults for ``retry_after``,
    ``retry_after_http_date`` and ``slow_delay``; pass a ``Fault`` to set them per fault.
    """

    def __init__(
        self,
        *,
        retry_after: int | None = 1,
        retry_after_http_date: bool = False,
        slow_delay: float = 1.0,
    ) -> None:
        self.retry_after = retry_after
        self.retry_after_http_date = retry_after_http_date
        self.slow_delay = slow_delay
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._pages: list[_PageRule] = []
        self._every: list[_EveryRule] = []
        self._outage_on = False
        self._outage_left: int | None = None
        self._chaos: tuple[float, random.Random, tuple[Fault, ...]] | None = None

    def fault(self, fault: FaultLike) -> Fault:
        """Normalise a kind or a ``Fault`` (a plain kind gets this object's defaults)."""
        if isinstance(fault, Fault):
            return fault
        return Fault(
            kind=FaultKind.parse(fault),
            retry_after=self.retry_after,
            retry_after_http_date=self.retry_after_http_date,
            delay=self.slow_delay,
        )

    def fail_next(self, count: int, fault: FaultLike) -> Faults:
        """The next ``count`` eligible requests get ``fault`` (queued after earlier ones)."""
        if count < 0:
            raise ValueError("count must be >= 0")
        normalised = self.fault(fault)
        with self._lock:
            self._queue.extend([normalised] * count)
        return self

    def on_page(
        self, page: int, fault: FaultLike, *, path: str | None = None, times: int | None = 1
    ) -> Faults:
        """Page ``page`` (1-based: ``offset // page_size + 1``) gets ``fault``, ``times`` times.

        ``times=None`` means every time; ``path`` limits the rule to one endpoint.
        """
        if page < 1:
            raise ValueError("page is 1-based")
        rule = _PageRule(page=page, fault=self.fault(fault), path=path, remaining=times)
        with self._lock:
            self._pages.append(rule)
        return self

    def every(self, nth: int, fault: FaultLike) -> Faults:
        """Every ``nth`` eligible request from now on (the nth, 2nth, ...) gets ``fault``."""
        if nth < 1:
            raise ValueError("nth must be >= 1")
        rule = _EveryRule(nth=nth, fault=self.fault(fault))
        with self._lock:
            self._every.append(rule)
        return self

    def outage(self, requests: int | None = None) -> Faults:
        """Answer 503 to the next ``requests`` eligible requests, or to all until ``end_outage``."""
        with self._lock:
            self._outage_on = requests is None or requests > 0
            self._outage_left = requests
        return self

    def end_outage(self) -> Faults:
        with self._lock:
            self._outage_on = False
            self._outage_left = None
        return self

    def chaos(
        self,
        probability: float,
        *,
        seed: int = 0,
        kinds: Iterable[FaultLike] = DEFAULT_CHAOS_KINDS,
    ) -> Faults:
        """Each eligible request independently gets a fault with ``probability``; kind uniform."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        faults = tuple(self.fault(k) for k in kinds)
        if not faults:
            raise ValueError("chaos needs at least one fault kind")
        with self._lock:
            self._chaos = (probability, random.Random(seed), faults)
        return self

    def clear(self) -> Faults:
        """Drop every schedule."""
        with self._lock:
            self._queue.clear()
            self._pages.clear()
            self._every.clear()
            self._outage_on = False
            self._outage_left = None
            self._chaos = None
        return self

    @property
    def active(self) -> bool:
        """Whether any schedule is still armed."""
        with self._lock:
            return bool(self._queue or self._pages or self._every or self._outage_on or self._chaos)

    def pick(self, path: str, page: int | None) -> Fault | None:
        """Called by the server once per eligible request: the fault to apply, if any."""
        with self._lock:
            chaos_fault = self._draw_chaos()
            for every in self._every:
                every.seen += 1
            if self._outage_on:
                if self._outage_left is not None:
                    self._outage_left -= 1
                    self._outage_on = self._outage_left > 0
                return replace(self.fault(FaultKind.UNAVAILABLE), retry_after=None)
            if self._queue:
                return self._queue.popleft()
            for rule in self._pages:
                if rule.page == page and rule.path in (None, path):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._pages.remove(rule)
                    return rule.fault
            for nth_rule in self._every:
                if nth_rule.seen % nth_rule.nth == 0:
                    return nth_rule.fault
            return chaos_fault

    def _draw_chaos(self) -> Fault | None:
        if self._chaos is None:
            return None
        probability, rng, faults = self._chaos
        hit = rng.random() < probability
        choice = faults[rng.randrange(len(faults))]
        return choice if hit else None
