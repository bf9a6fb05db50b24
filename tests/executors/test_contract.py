"""The executor contract on the in-memory fake and the dry-run executor."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from arbiter.executors.dry_run import DryRunExecutor
from arbiter.ports import FakeClock, FakeExecutor
from tests.executors.contract import START, ExecutorContract, Harness


class TestFakeExecutor(ExecutorContract):
    @pytest.fixture
    def h(self) -> Iterator[Harness]:
        clock = FakeClock(START)
        ex = FakeExecutor(clock, warmup=timedelta(seconds=30))
        yield Harness(
            ex,
            lambda: clock.advance(timedelta(seconds=31)) and None,
            lambda offer: ex.no_capacity.add(offer.key),
        )


class TestDryRunExecutor(ExecutorContract):
    @pytest.fixture
    def h(self) -> Iterator[Harness]:
        yield Harness(DryRunExecutor(FakeClock(START)), lambda: None, None)
