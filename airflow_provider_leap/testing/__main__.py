"""``python -m airflow_provider_leap.testing``: serve the Leap emulator until SIGINT/SIGTERM.

Prints one line (URL, and where the accepted API key came from, never the key itself) so scripts
and demos can pick the instance up, then stays quiet unless ``--verbose``. The key comes from
``--api-key``, else the ``LEAP_EMULATOR_API_KEY`` environment variable (which, unlike argv, ``ps``
does not show), else the public default ``EMULATOR_API_KEY``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from types import FrameType

from airflow_provider_leap.testing import EMULATOR_API_KEY
from airflow_provider_leap.testing.data import from_us, parse_utc

API_KEY_ENV = "LEAP_EMULATOR_API_KEY"


def _count_kind(text: str) -> tuple[int, str]:
    """``"3:rate-limit"`` -> (3, "rate-limit"); the number is a count, an Nth or a page."""
    number, sep, kind = text.partition(":")
    if not sep or not number.strip().isdigit() or not kind.strip():
        raise argparse.ArgumentTypeError(f"expected NUMBER:KIND, got {text!r}")
    return int(number), kind.strip()


def _timestamp(text: str) -> datetime:
    us = parse_utc(text)
    if us is None:
        raise argparse.ArgumentTypeError("--now needs a UTC offset, e.g. 2025-01-01T00:00:00Z")
    return from_us(us)


def _api_key(flag: str | None) -> tuple[str, str]:
    """The key to accept and where it came from (what the banner prints instead of the key)."""
    if flag:
        return flag, "from-flag"
    from_env = os.environ.get(API_KEY_ENV)
    if from_env:
        return from_env, f"from-${API_KEY_ENV}"
    return EMULATOR_API_KEY, "default"


def build_parser() -> argparse.ArgumentParser:
    kinds = "rate-limit|429, server-error|500, bad-gateway|502, unavailable|503, slow, "
    kinds += "malformed, repeat-token, reset"
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_leap.testing",
        description="Local emulator of Leap's Connect and Meters APIs.",
        epilog=f"Fault kinds: {kinds}.",
    )
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument(
        "--api-key",
        help=f"the only key accepted (default: ${API_KEY_ENV}, else {EMULATOR_API_KEY!r})",
    )
    parser.add_argument("--now", type=_timestamp, help="reference time (default: wall clock)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument(
        "--admin",
        action="store_true",
        help="serve /_emulator/ endpoints that change records while running (loopback, no auth)",
    )
    faults = parser.add_argument_group("faults")
    for flag, metavar, text in (
        ("--fail-next", "COUNT:KIND", "fail the next COUNT requests with KIND"),
        ("--every", "N:KIND", "every Nth request gets KIND"),
        ("--page-fault", "PAGE:KIND", "page PAGE (1-based) gets KIND, once"),
    ):
        faults.add_argument(
            flag, type=_count_kind, action="append", default=[], metavar=metavar, help=text
        )
    faults.add_argument(
        "--outage",
        type=int,
        metavar="N",
        help="answer 503 to the next N requests (0: until restarted)",
    )
    faults.add_argument(
        "--chaos",
        type=float,
        metavar="P",
        help="each request gets a random fault with probability P",
    )
    faults.add_argument("--chaos-seed", type=int, default=0)
    faults.add_argument(
        "--chaos-kinds",
        default="rate-limit,server-error,bad-gateway,unavailable,reset",
        metavar="K1,K2",
        help="kinds chaos picks from",
    )
    faults.add_argument(
        "--retry-after", type=int, default=1, metavar="SECONDS", help="Retry-After of 429 answers"
    )
    faults.add_argument(
        "--retry-after-date",
        action="store_true",
        help="send Retry-After as an HTTP-date instead of seconds",
    )
    faults.add_argument("--no-retry-after", action="store_true", help="429 without Retry-After")
    faults.add_argument(
        "--slow-delay", type=float, default=1.0, metavar="SECONDS", help="delay of the slow fault"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from airflow_provider_leap.testing.faults import Faults
    from airflow_provider_leap.testing.server import LeapEmulator

    try:
        faults = Faults(
            retry_after=None if args.no_retry_after else args.retry_after,
            retry_after_http_date=args.retry_after_date,
            slow_delay=args.slow_delay,
        )
        for count, kind in args.fail_next:
            faults.fail_next(count, kind)
        for nth, kind in args.every:
            faults.every(nth, kind)
        for page, kind in args.page_fault:
            faults.on_page(page, kind)
        if args.outage is not None:
            faults.outage(args.outage or None)
        if args.chaos:
            kinds = [k for k in args.chaos_kinds.split(",") if k.strip()]
            faults.chaos(args.chaos, seed=args.chaos_seed, kinds=kinds)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    api_key, key_source = _api_key(args.api_key)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    emulator = LeapEmulator(
        seed=args.seed,
        records=args.records,
        api_key=api_key,
        now=args.now,
        faults=faults,
        port=args.port,
        verbose=args.verbose,
        admin=args.admin,
    )
    with emulator:
        print(
            f"Leap emulator: url={emulator.url} api_key={key_source} "
            f"records={len(emulator.records)} seed={args.seed}"
            + (" admin=/_emulator/" if args.admin else ""),
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
