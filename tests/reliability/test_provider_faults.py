"""Provider faults end to end: a real adapter (Azure's Retail Prices API through httpx)
against the local fake on 127.0.0.1, polled by the real Poller into a real store.

tests/providers/ already pins how each adapter translates a single 429, 5xx, timeout or
malformed page into the project's errors; tests/test_polling.py pins the retry rules on
an in-memory fake. What is left, and tested here, is the whole chain under a sustained
fault: a storm of 429s that outlasts every retry, a 5xx burst that ends within them, a
response that is always too slow, and a partial payload — what is retried and how long
it waits, what reaches the store (nothing of a rejected fetch), when the source shows as
degraded, and that it recovers by itself when the fault ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from arbiter.catalog import load_catalog
from arbiter.config import SourceConfig
from arbiter.polling import DEGRADED_AFTER, ConfiguredSource, Poller, RetryPolicy
from arbiter.ports import FakeClock
from arbiter.store.repositories import Store
from providers.azure import build
from tests.fakes.azure import FakeAzure, Reply
from tests.providers.test_azure import price_item

NOW = datetime(2026, 8, 22, 21, 0, tzinfo=UTC)
A100 = "Standard_NC24ads_A100_v4"
H100 = "Standard_NC40ads_H100_v5"
RETRIES = RetryPolicy(attempts=3, initial_wait=1, max_wait=30)


class Sleeps(list[float]):
    """Records the poller's waits instead of sleeping them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def azure() -> Iterator[FakeAzure]:
    with FakeAzure(price_page_size=1) as server:
        server.prices["westeurope"] = [price_item(A100, 4.775), price_item(H100, 6.98)]
        yield server


def poller(store: Store, fake: FakeAzure, sleeps: Sleeps, *, timeout: float = 5.0) -> Poller:
    adapter = build(
        "azure",
        {"regions": ["westeurope"], "retail_prices_url": fake.retail_prices_url},
        timeout=timeout,
    )
    config = SourceConfig(kind="azure", timeout=timeout)
    return Poller(
        store,
        {"azure": ConfiguredSource("azure", config, adapter)},
        load_catalog(),
        FakeClock(NOW),
        retry=RETRIES,
        sleep=sleeps,
    )


def stored(store: Store) -> dict[str, float]:
    return {p.offer.instance_type: p.usd_per_hour for p in store.prices.latest()}


def throttle(fake: FakeAzure, times: int, retry_after: str = "7") -> None:
    body = b'{"error": {"code": "TooManyRequests", "message": "Rate limit exceeded."}}'
    fake.script("prices", *[Reply(429, body, {"Retry-After": retry_after})] * times)


def test_a_429_storm_outlasting_every_retry_waits_as_told_then_degrades_the_source(
    store: Store, azure: FakeAzure
) -> None:
    sleeps = Sleeps()
    p = poller(store, azure, sleeps)
    assert p.poll("azure").ok
    before = stored(store)
    azure.requests.clear()
    throttle(azure, RETRIES.attempts * DEGRADED_AFTER, retry_after="7")
    with capture_logs() as logs:
        for _ in range(DEGRADED_AFTER):
            p.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
            result = p.poll("azure")
            assert not result.ok and "HTTP 429" in (result.error or "")
    # each poll tried `attempts` times, waiting Retry-After between tries, never more
    assert len(azure.requests) == RETRIES.attempts * DEGRADED_AFTER
    assert sleeps == [7.0] * (RETRIES.attempts - 1) * DEGRADED_AFTER
    retries = [e for e in logs if e["event"] == "retrying"]
    assert [e["wait_seconds"] for e in retries] == sleeps
    (status,) = store.sources.all()
    assert status.consecutive_failures == DEGRADED_AFTER, "degraded"
    assert "throttled" in (status.last_error or "")
    assert stored(store) == before, "what was stored stays"

    p.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
    assert p.poll("azure").ok, "the storm is over: the next poll succeeds by itself"
    assert store.sources.all()[0].consecutive_failures == 0


def test_a_retry_after_longer_than_the_policy_allows_is_capped(
    store: Store, azure: FakeAzure
) -> None:
    sleeps = Sleeps()
    throttle(azure, 1, retry_after="86400")
    assert poller(store, azure, sleeps).poll("azure").ok
    assert sleeps == [RETRIES.max_wait]


def test_a_burst_of_5xx_that_ends_within_the_retries_is_one_good_poll(
    store: Store, azure: FakeAzure
) -> None:
    sleeps = Sleeps()
    body = b'{"error": {"code": "ServiceUnavailable", "message": "try again"}}'
    azure.script("prices", Reply(503, body), Reply(502, body))
    result = poller(store, azure, sleeps).poll("azure")
    assert result.ok and result.prices.inserted == 2
    assert len(sleeps) == 2 and all(0 < s <= RETRIES.max_wait for s in sleeps)
    assert store.sources.all()[0].consecutive_failures == 0


def test_a_source_that_always_answers_too_late_is_retried_then_degraded_in_bounded_time(
    store: Store, azure: FakeAzure
) -> None:
    sleeps = Sleeps()
    p = poller(store, azure, sleeps, timeout=0.2)
    azure.script("prices", *[Reply(delay=2.0)] * (RETRIES.attempts * DEGRADED_AFTER))
    started = time.monotonic()
    for _ in range(DEGRADED_AFTER):
        result = p.poll("azure")
        assert not result.ok and "timed out" in (result.error or "")
    took = time.monotonic() - started
    assert took < RETRIES.attempts * DEGRADED_AFTER * 1.0, f"{took:.1f} s: the timeout held"
    assert store.sources.all()[0].consecutive_failures == DEGRADED_AFTER
    assert store.prices.latest() == []


def test_a_partial_payload_is_rejected_whole_and_the_earlier_data_stays(
    store: Store, azure: FakeAzure
) -> None:
    sleeps = Sleeps()
    p = poller(store, azure, sleeps)
    assert p.poll("azure").ok
    before = stored(store)
    assert before == {A100: 4.775, H100: 6.98}
    # the next poll: page 1 carries a new A100 price and a new SKU, page 2 is cut short
    bad = price_item(H100, 5.0)
    del bad["retailPrice"]
    azure.prices["westeurope"] = [price_item(A100, 3.10), bad, price_item("Standard_NC8as_T4_v3")]
    azure.requests.clear()
    p.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
    result = p.poll("azure")
    assert not result.ok
    assert "Items[0].retailPrice" in (result.error or "")  # the field, on the page it is on
    assert len(azure.requests) == 2, "a malformed payload is not retried"
    assert sleeps == []
    assert stored(store) == before, "not even the good first page was written"
    (status,) = store.sources.all()
    assert status.consecutive_failures == 1 and status.last_success_at == NOW


def test_a_malformed_body_among_good_ones_never_reaches_the_store(
    store: Store, azure: FakeAzure
) -> None:
    sleeps = Sleeps()
    p = poller(store, azure, sleeps)
    results: list[Any] = []
    bodies = [b"<html>maintenance</html>", b'{"Items": {}, "NextPageLink": null}', b"\x00\xff"]
    for body in bodies:
        azure.malformed("prices", body)
        results.append(p.poll("azure"))
        p.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
        assert store.prices.latest() == []
    assert [r.ok for r in results] == [False, False, False]
    assert p.poll("azure").ok and stored(store) == {A100: 4.775, H100: 6.98}
