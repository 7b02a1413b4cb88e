"""Retry decisions: which failures are retried, Retry-After forms, and the bounds."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from airflow_provider_leap.retry import RetryPolicy, is_retryable_status, parse_retry_after

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retried(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 200, 302])
def test_other_statuses_are_not_retried(status: int) -> None:
    assert not is_retryable_status(status)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", None),  # unusable: back off instead of retrying back to back
        ("inf", None),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), None),
        ("Sat, 28 Nov 2026 12:01:00 GMT", 60.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_retry_after_forms(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=10.0, jitter=0.0)
    rng = random.Random(0)
    assert [policy.backoff(n, rng) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_only_shortens_the_wait_within_its_fraction() -> None:
    policy = RetryPolicy(backoff_base=4.0, jitter=0.5)
    rng = random.Random(1)
    waits = {policy.backoff(1, rng) for _ in range(200)}
    assert all(2.0 <= w <= 4.0 for w in waits)
    assert len(waits) > 100  # really jittered, not constant


def test_retry_after_wins_over_backoff() -> None:
    policy = RetryPolicy(backoff_base=1.0, jitter=0.0)
    assert policy.next_wait(1, 0.0, random.Random(0), retry_after=9.0) == 9.0


def test_attempt_bound() -> None:
    policy = RetryPolicy(max_retries=2, jitter=0.0)
    rng = random.Random(0)
    assert policy.next_wait(2, 0.0, rng) == 2.0
    assert policy.next_wait(3, 0.0, rng) is None


def test_total_wait_bound_includes_retry_after() -> None:
    policy = RetryPolicy(max_retries=10, max_wait=10.0, jitter=0.0)
    rng = random.Random(0)
    assert policy.next_wait(1, 9.0, rng) == 1.0
    assert policy.next_wait(1, 9.5, rng) is None
    # A Retry-After longer than what is left ends the retries at once instead of waiting.
    assert policy.next_wait(1, 0.0, rng, retry_after=11.0) is None
    assert policy.give_up_reason(1, 4.0, 11.0) == (
        "Leap asked to wait 11 s (Retry-After), more than the 6 s left of max_retry_wait=10 s; "
        "raise max_retry_wait to wait it out"
    )
    assert policy.give_up_reason(11, 0.0, None) == "max_retries=10 spent"
    assert policy.give_up_reason(1, 9.5, None) == "the next wait would pass max_retry_wait=10 s"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"jitter": 1.5},
        {"max_wait": -1.0},
        {"max_wait": float("inf")},
        {"backoff_base": -1.0},
    ],
)
def test_invalid_policy_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
