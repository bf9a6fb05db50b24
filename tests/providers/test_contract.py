"""One contract for every market-data source (arbiter/ports.py), run against the
in-memory fake, the replay and each real adapter driven through its real client
against a local server. Per-adapter details live in each adapter's own tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from arbiter.domain.market import (
    CapacitySignal,
    CarbonReading,
    InstanceType,
    Market,
    Offer,
    PriceQuote,
)
from arbiter.errors import ProviderError
from arbiter.ports import FakeMarket
from tests.fakes.aws import (
    OFFER_FILE_P4D,
    SPOT_ADVISOR_FILE,
    MotoServer,
    Reply,
    StaticHttpServer,
    bulk_price_list_path,
    refused_url,
    use_fake_credentials,
)
from tests.fakes.azure import FakeAzure
from tests.fakes.gcp import API_KEY as GCP_API_KEY
from tests.fakes.gcp import FakeGcp

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
NAME = "contract"
DATA = Path(__file__).parents[1] / "data"
ZONES = ["DE", "FR", "GB", "US-CAL-CISO", "US-MIDA-PJM"]

Builder = Callable[[ExitStack, bool], Any]
"""Builds a source on a working (False) or unreachable (True) backend."""


def fake_market(stack: ExitStack, broken: bool) -> FakeMarket:
    market = FakeMarket(NAME)
    offer = Offer(provider="aws", region="us-east-1", instance_type="p5.48xlarge", market="spot")
    market.prices = [PriceQuote(offer=offer, usd_per_hour=30, observed_at=NOW, source=NAME)]
    market.instance_types = [
        InstanceType(
            provider="aws",
            name="p5.48xlarge",
            vcpus=192,
            memory_gib=2048,
            accelerator="H100",
            accelerator_count=8,
            accelerator_memory_gib=80,
        )
    ]
    market.carbon = [
        CarbonReading(zone="DE", valid_at=NOW, value=380, basis="lifecycle", source=NAME)
    ]
    if broken:
        from arbiter.errors import Unavailable

        market.failures = [Unavailable("down", source=NAME)] * 10
    return market


def replay(stack: ExitStack, broken: bool) -> Any:
    from providers.replay import build

    assert not broken, "the replay reads shipped files: it has no backend to lose"
    return build(NAME, {}, timeout=5)


def aws(stack: ExitStack, broken: bool) -> Any:
    from providers.aws import build

    moto = stack.enter_context(MotoServer())
    static = stack.enter_context(
        StaticHttpServer(
            {
                bulk_price_list_path("us-east-1"): Reply.file(OFFER_FILE_P4D),
                "/spot-advisor-data.json": Reply.file(SPOT_ADVISOR_FILE),
            }
        )
    )
    dead = refused_url()
    return build(
        NAME,
        {
            "regions": ["us-east-1"],
            "instance_types": ["g5.xlarge", "p4d.24xlarge"],
            "endpoint_url": dead if broken else moto.url,
            "pricing_endpoint_url": dead,  # moto has no Pricing API: the bulk file answers
            "pricing_bulk_url": dead if broken else static.url,
            "spot_advisor_url": (dead if broken else static.url) + "/spot-advisor-data.json",
            "placement_scores": False,  # not in moto; covered with Stubber in test_aws.py
        },
        timeout=10,
    )


def gcp(stack: ExitStack, broken: bool) -> Any:
    from providers.gcp import build

    fake = stack.enter_context(FakeGcp.from_fixtures())
    url = refused_url() if broken else fake.url
    return build(
        NAME,
        {
            "project": "arbiter-test",
            "compute_endpoint": url,
            "billing_endpoint": url,
            "anonymous": True,
            "api_key": GCP_API_KEY,
        },
        timeout=5,
    )


def azure(stack: ExitStack, broken: bool) -> Any:
    from providers.azure import build

    fake = stack.enter_context(FakeAzure())
    fake.prices["westeurope"] = json.loads(
        (DATA / "azure" / "retail_prices.westeurope.json").read_text()
    )
    fake.skus["eastus"] = json.loads((DATA / "azure" / "resource_skus.eastus.json").read_text())[
        "value"
    ]
    base = refused_url() if broken else fake.base_url
    source = build(
        NAME,
        {
            "regions": ["westeurope", "eastus"],
            "subscription_id": "00000000-0000-0000-0000-000000000000",
            "arm_endpoint": base,
            "retail_prices_url": f"{base}/api/retail/prices",
        },
        timeout=5,
    )
    from azure.core.credentials import AccessToken

    class Token:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("fake-token", 4102444800)

    source._credential = Token()  # the fake accepts any bearer token
    return source


CARBON_DATA = DATA / "carbon"


def _recorded(path: str) -> Any:
    return json.loads((CARBON_DATA / path).read_text(encoding="utf-8"))


def _carbon_api(stack: ExitStack, base: str, broken: bool) -> respx.MockRouter:
    router = stack.enter_context(respx.mock(base_url=base, assert_all_called=False))
    if broken:
        router.route().mock(side_effect=httpx.ConnectError("connection refused"))
    return router


def electricitymaps(stack: ExitStack, broken: bool) -> Any:
    from providers.electricitymaps import build

    base = "http://127.0.0.1:9911/v3"
    api = _carbon_api(stack, base, broken)
    api.get("/carbon-intensity/latest", params={"zone": "DE"}).respond(
        json=_recorded("electricitymaps/v3_carbon-intensity_latest.DE.json")
    )
    api.get("/carbon-intensity/latest").respond(
        404, json=_recorded("electricitymaps/v3_carbon-intensity_latest.error_no_recent_data.json")
    )
    return build(NAME, {"token": "em-secret", "base_url": base}, timeout=5)


def watttime(stack: ExitStack, broken: bool) -> Any:
    from providers.watttime import build

    base = "http://127.0.0.1:9912"
    api = _carbon_api(stack, base, broken)
    api.get("/login").respond(json={"token": "wt-token"})
    api.get("/v3/forecast").respond(json=_recorded("watttime/v3_historical.CAISO_NORTH.json"))
    api.get("/v3/signal-index").respond(
        json={
            **_recorded("watttime/v3_signal-index.PSCO.json"),
            "meta": {
                **_recorded("watttime/v3_signal-index.PSCO.json")["meta"],
                "region": "CAISO_NORTH",
            },
        }
    )
    return build(
        NAME,
        {
            "username": "bot",
            "password": "wt-secret",
            "base_url": base,
            "regions": {"US-CAL-CISO": "CAISO_NORTH"},
        },
        timeout=5,
    )


def ukci(stack: ExitStack, broken: bool) -> Any:
    from providers.ukci import build

    base = "http://127.0.0.1:9913"
    api = _carbon_api(stack, base, broken)
    api.get("/intensity").respond(json=_recorded("ukci/intensity.docs-example.json"))
    return build(NAME, {"base_url": base}, timeout=5)


def static_carbon(stack: ExitStack, broken: bool) -> Any:
    from providers.static_carbon import build

    assert not broken, "the static table ships with arbiter: no backend to lose"
    return build(NAME, {}, timeout=5)


PRICES, TYPES, CAPACITY, CARBON = "prices", "instance_types", "capacity", "carbon"
PORT_METHODS = {
    PRICES: "fetch_prices",
    TYPES: "fetch_instance_types",
    CAPACITY: "fetch_capacity",
    CARBON: "fetch_carbon",
}
IMPLEMENTATIONS: dict[str, tuple[Builder, frozenset[str], bool]] = {
    # name: (builder, ports it implements, whether it has a backend that can be lost)
    "fake": (fake_market, frozenset({PRICES, TYPES, CAPACITY, CARBON}), True),
    "replay": (replay, frozenset({PRICES, TYPES, CAPACITY}), False),
    "aws": (aws, frozenset({PRICES, TYPES, CAPACITY}), True),
    "gcp": (gcp, frozenset({PRICES, TYPES, CAPACITY}), True),
    "azure": (azure, frozenset({PRICES, TYPES, CAPACITY}), True),
    "electricitymaps": (electricitymaps, frozenset({CARBON}), True),
    "watttime": (watttime, frozenset({CARBON}), True),
    "ukci": (ukci, frozenset({CARBON}), True),
    "static-carbon": (static_carbon, frozenset({CARBON}), False),
}


def implementing(port: str) -> list[str]:
    return sorted(name for name, (_, ports, _) in IMPLEMENTATIONS.items() if port in ports)


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ExitStack]:
    use_fake_credentials(monkeypatch, tmp_path)
    with ExitStack() as opened:
        yield opened


def make(name: str, stack: ExitStack, *, broken: bool = False) -> Any:
    builder, ports, _ = IMPLEMENTATIONS[name]
    source = builder(stack, broken)
    for port, method in PORT_METHODS.items():
        assert hasattr(source, method) == (port in ports), f"{name} and {method} disagree"
    return source


def _aware_and_not_future(when: datetime) -> bool:
    return when.tzinfo is not None and when.utcoffset() is not None and when <= NOW


@pytest.mark.parametrize("name", implementing(PRICES))
def test_prices_are_complete_quotes_labelled_with_the_source(name: str, stack: ExitStack) -> None:
    source = make(name, stack)
    quotes = source.fetch_prices(since=None, now=NOW)
    assert quotes, "a working price source returns prices"
    assert all(isinstance(q, PriceQuote) for q in quotes)
    assert {q.source for q in quotes} == {NAME}
    assert all(_aware_and_not_future(q.observed_at) for q in quotes)
    assert all(q.usd_per_hour >= 0 for q in quotes)
    assert {q.offer.market for q in quotes} <= {Market.SPOT, Market.ON_DEMAND}


@pytest.mark.parametrize("name", implementing(PRICES))
def test_every_offered_price_is_current_as_of_now(name: str, stack: ExitStack) -> None:
    source = make(name, stack)
    newest: dict[str, datetime] = {}
    for q in source.fetch_prices(since=None, now=NOW):
        newest[q.offer.key] = max(newest.get(q.offer.key, q.observed_at), q.observed_at)
    assert set(newest.values()) == {NOW}


@pytest.mark.parametrize("name", implementing(TYPES))
def test_instance_types_carry_their_accelerators(name: str, stack: ExitStack) -> None:
    source = make(name, stack)
    types = source.fetch_instance_types()
    assert types and all(isinstance(t, InstanceType) for t in types)
    assert all(t.accelerator and t.accelerator_count > 0 for t in types)
    assert len({(t.provider, t.name) for t in types}) == len(types)


@pytest.mark.parametrize("name", implementing(CAPACITY))
def test_capacity_signals_are_labelled_and_observed_by_now(name: str, stack: ExitStack) -> None:
    source = make(name, stack)
    signals = source.fetch_capacity(now=NOW)
    assert all(isinstance(s, CapacitySignal) for s in signals)
    assert all(s.source == NAME and _aware_and_not_future(s.observed_at) for s in signals)


@pytest.mark.parametrize("name", implementing(CARBON))
def test_carbon_covers_only_the_zones_asked_for(name: str, stack: ExitStack) -> None:
    source = make(name, stack)
    readings = source.fetch_carbon(ZONES, now=NOW)
    assert readings, "a working carbon source answers for a zone it covers"
    assert all(isinstance(r, CarbonReading) for r in readings)
    assert {r.zone for r in readings} <= set(ZONES)
    assert all(r.source == NAME for r in readings)


@pytest.mark.parametrize("name", sorted(n for n, (_, _, net) in IMPLEMENTATIONS.items() if net))
def test_an_unreachable_backend_is_a_provider_error(name: str, stack: ExitStack) -> None:
    source = make(name, stack, broken=True)
    _, ports, _ = IMPLEMENTATIONS[name]
    calls: dict[str, Callable[[], Any]] = {
        PRICES: lambda: source.fetch_prices(since=None, now=NOW),
        TYPES: lambda: source.fetch_instance_types(),
        CARBON: lambda: source.fetch_carbon(ZONES, now=NOW),
    }
    for port, call in calls.items():
        if port in ports:
            with pytest.raises(ProviderError):
                call()
