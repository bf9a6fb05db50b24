"""Polling market-data sources into the store.

One :class:`Poller` per daemon; :meth:`Poller.poll` runs one source once: each port the
source implements (instance types, prices, capacity, carbon) is fetched with retries
for temporary errors only (Throttled honours its ``Retry-After``; Unavailable backs
off exponentially with jitter), validated whole, and written to the store. A fetch
that fails leaves what was stored before intact and counts towards the source's failure
streak; after ``DEGRADED_AFTER`` consecutive failures the source shows as degraded.
Its data then ages into stale by its own ``stale_after``: nothing re-stamps old data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import tenacity

from arbiter.config import SourceConfig, secret_values
from arbiter.domain.regions import RegionCatalog
from arbiter.errors import ArbiterError, ProviderError, StoreError, Throttled, Unavailable
from arbiter.logs import get_logger, mask_values
from arbiter.ports import Clock
from arbiter.store.changepoints import IngestStats
from arbiter.store.repositories import Store

DEGRADED_AFTER = 3
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Which errors are retried and how: declared once, applied to every source."""

    attempts: int = 4
    initial_wait: float = 1.0
    max_wait: float = 60.0


class _Wait(tenacity.wait.wait_base):
    """Honour Throttled.retry_after; otherwise exponential backoff with jitter."""

    def __init__(self, policy: RetryPolicy):
        self._policy = policy
        self._backoff = tenacity.wait_exponential_jitter(
            initial=policy.initial_wait, max=policy.max_wait
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, Throttled) and exc.retry_after is not None:
            return float(min(exc.retry_after, self._policy.max_wait))
        return float(self._backoff(retry_state))


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Call ``fn``; retry Throttled and Unavailable up to ``policy.attempts`` times."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry and state.outcome is not None and state.next_action is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc, state.next_action.sleep)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((Throttled, Unavailable)),
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=_Wait(policy),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


@dataclass
class PollResult:
    source: str
    ok: bool = True
    prices: IngestStats = field(default_factory=IngestStats)
    capacity: IngestStats = field(default_factory=IngestStats)
    carbon: int = 0
    instance_types: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class ConfiguredSource:
    name: str
    config: SourceConfig
    adapter: Any


class Poller:
    def __init__(
        self,
        store: Store,
        sources: Mapping[str, ConfiguredSource],
        catalog: RegionCatalog,
        clock: Clock,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.store = store
        self.sources = dict(sources)
        self.catalog = catalog
        self.clock = clock
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self._last_price_poll: dict[str, datetime] = {}

    def carbon_zones(self) -> list[str]:
        """Grid zones of the regions that have offers; every catalog zone before that."""
        regions = {p.offer.region_key for p in self.store.prices.latest()}
        zones = {r.grid_zone for r in self.catalog if not regions or r.key in regions}
        return sorted(zones)

    def poll(self, name: str) -> PollResult:
        """Run one source once. Never raises: a failure is recorded in the store, or only
        logged when the store itself is failing (unreachable, full)."""
        configured = self.sources[name]
        adapter = configured.adapter
        log = get_logger("poller", source=name)
        started = time.monotonic()
        now = self.clock.now()
        result = PollResult(source=name)

        secrets = secret_values(configured.config.options)

        def hide(text: str) -> str:
            # a server may echo a refused credential back in its error body
            return mask_values(text, secrets)

        def fetch(what: str, fn: Callable[[], T]) -> T:
            def retrying(exc: BaseException, wait: float) -> None:
                log.warning(
                    "retrying", fetch=what, error=hide(str(exc)), wait_seconds=round(wait, 2)
                )

            return call_with_retries(fn, self.retry, sleep=self.sleep, on_retry=retrying)

        try:
            if hasattr(adapter, "fetch_instance_types"):
                types = fetch("instance_types", adapter.fetch_instance_types)
                result.instance_types = self.store.instance_types.upsert(types, now=now)
            if hasattr(adapter, "fetch_prices"):
                since = self._last_price_poll.get(name)
                if since is not None and since > now:
                    # The clock stepped back: there are no changes since a time still to
                    # come, and what happened since the last poll is unknown. Ask for
                    # every current price, as a first poll does; the store takes them as
                    # the newest, whatever their times (arbiter.store.changepoints).
                    log.warning(
                        "the clock went back since the last poll",
                        last_poll=since.isoformat(),
                        now=now.isoformat(),
                    )
                    since = None
                quotes = fetch("prices", lambda: adapter.fetch_prices(since=since, now=now))
                result.prices = self.store.prices.record(quotes)
                self._last_price_poll[name] = now
            if hasattr(adapter, "fetch_capacity"):
                signals = fetch("capacity", lambda: adapter.fetch_capacity(now=now))
                result.capacity = self.store.capacity.record(signals)
            if hasattr(adapter, "fetch_carbon"):
                zones = self.carbon_zones()
                readings = fetch("carbon", lambda: adapter.fetch_carbon(zones, now=now))
                result.carbon = self.store.carbon.record(readings, observed_at=now)
        except ProviderError as exc:
            result.ok, result.error = False, hide(str(exc))
        except ArbiterError as exc:
            result.ok, result.error = False, hide(f"{name}: {exc}")
        result.seconds = time.monotonic() - started
        try:
            if result.ok:
                self.store.sources.succeeded(name, at=now)
            else:
                self.store.sources.failed(name, at=now, error=result.error or "")
        except StoreError as exc:
            # The store itself is failing (unreachable, disk full): the poll's outcome is
            # logged below all the same, and the next poll records it again.
            log.error("source status not recorded", error=str(exc))
        if result.ok:
            log.info(
                "polled",
                prices_new=result.prices.inserted,
                prices_unchanged=result.prices.extended,
                capacity_new=result.capacity.inserted,
                carbon=result.carbon,
                instance_types=result.instance_types,
                seconds=round(result.seconds, 3),
            )
        else:
            log.error("poll failed; stored data kept", error=result.error)
        return result


def build_sources(configs: Mapping[str, SourceConfig]) -> dict[str, ConfiguredSource]:
    """Build every enabled source through the registry, in order; the caller closes
    them (:func:`close_sources`). Raises ConfigError when one refuses its options,
    after closing those built before it: a failed build leaves no client open."""
    from providers.registry import build_source

    built: dict[str, ConfiguredSource] = {}
    try:
        for name, config in configs.items():
            if not config.enabled:
                continue
            adapter = build_source(
                config.kind, name, config.options, timeout=config.timeout, origin=config.origin
            )
            built[name] = ConfiguredSource(name, config, adapter)
    except BaseException:  # also an interrupt: nobody else will close what was built
        close_sources(built)
        raise
    return built


def close_sources(sources: Mapping[str, ConfiguredSource]) -> None:
    """Close each source that holds something (a replay source holds nothing), once, in
    order. A failing close is logged ("could not close the market-data source") and
    neither keeps the others open nor raises: the caller's own error, if any, stands."""
    log = get_logger("poller")
    for name, configured in sources.items():
        close = getattr(configured.adapter, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception as exc:  # any SDK or transport error: close the rest
            log.warning("could not close the market-data source", source=name, error=str(exc))
