"""pytest fixtures for the Leap emulator; opt-in with
``pytest_plugins = ["airflow_provider_leap.testing.pytest_plugin"]`` in a ``conftest.py``.

- ``leap_emulator_session``: one emulator per session (seed 0, 500 records, wall-clock ``now``).
- ``leap_emulator``: that same instance, reset before and after the test (no faults, empty
  request log, initial clock and records), so tests stay fast yet independent.
- ``leap_emulator_factory``: ``factory(**LeapEmulator kwargs)`` starts a custom instance and
  stops it at teardown.

Nothing here is autouse and the server module is imported inside the fixtures, so naming the plugin
costs a test session nothing until a fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from airflow_provider_leap.testing.server import LeapEmulator


@pytest.fixture(scope="session")
def leap_emulator_session() -> Iterator[LeapEmulator]:
    from airflow_provider_leap.testing.server import LeapEmulator

    with LeapEmulator() as emulator:
        yield emulator


@pytest.fixture
def leap_emulator(leap_emulator_session: LeapEmulator) -> Iterator[LeapEmulator]:
    leap_emulator_session.reset()
    yield leap_emulator_session
    leap_emulator_session.reset()


@pytest.fixture
def leap_emulator_factory() -> Iterator[Callable[..., LeapEmulator]]:
    from airflow_provider_leap.testing.server import LeapEmulator

    started: list[LeapEmulator] = []

    def factory(**kwargs: Any) -> LeapEmulator:
        emulator = LeapEmulator(**kwargs).start()
        started.append(emulator)
        return emulator

    yield factory
    for emulator in reversed(started):
        emulator.stop()
