"""The Azure adapter against a local fake of ARM and the Retail Prices API.

The real azure-mgmt-compute client and a real httpx client talk over sockets to
``tests/fakes/azure.py`` on 127.0.0.1; nothing reaches an Azure host.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from arbiter.domain.market import CapacityKind, CapacitySignal, Market, PriceQuote
from arbiter.errors import AuthFailed, BadPayload, ConfigError, Throttled, Unavailable
from providers.azure import AzureSource, build, gpu_model
from tests.fakes.azure import SUBSCRIPTION, FakeAzure, Reply

NOW = datetime(2026, 8, 22, 21, 0, tzinfo=UTC)
DATA = Path(__file__).resolve().parents[1] / "data" / "azure"


class FakeCredential:
    """An azure-core TokenCredential that always has a token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-token", int(time.time()) + 3600)


@pytest.fixture
def fake() -> Iterator[FakeAzure]:
    with FakeAzure() as server:
        yield server


def make_source(
    fake: FakeAzure, *, timeout: float = 5.0, token_credential: Any = None, **options: Any
) -> AzureSource:
    """A source on the fake, built from options, with a token credential that works."""
    built = build(
        "azure-test",
        {
            "regions": ["westeurope"],
            "subscription_id": SUBSCRIPTION,
            "arm_endpoint": fake.base_url,
            "retail_prices_url": fake.retail_prices_url,
            **options,
        },
        timeout=timeout,
    )
    return AzureSource(
        built.name, built.options, timeout=timeout, credential=token_credential or FakeCredential()
    )


def price_item(
    sku: str = "Standard_NC24ads_A100_v4",
    price: float = 4.775,
    *,
    spot: bool = False,
    region: str = "westeurope",
    product: str = "Virtual Machines NCadsA100v4 Series",
    **fields: Any,
) -> dict[str, Any]:
    meter = sku.removeprefix("Standard_").replace("_", " ") + (" Spot" if spot else "")
    return {
        "currencyCode": "USD",
        "retailPrice": price,
        "unitPrice": price,
        "armRegionName": region,
        "armSkuName": sku,
        "meterName": meter,
        "skuName": meter,
        "productName": product,
        "serviceName": "Virtual Machines",
        "unitOfMeasure": "1 Hour",
        "type": "Consumption",
        **fields,
    }


def gpu_sku(
    name: str,
    family: str,
    vcpus: int,
    memory_gb: float,
    gpus: int,
    *restrictions: dict[str, Any],
    region: str = "westeurope",
) -> dict[str, Any]:
    """A resource SKU in the shape of the recorded ``resourceSkus`` payload."""
    return {
        "resourceType": "virtualMachines",
        "name": name,
        "tier": "Standard",
        "size": name.removeprefix("Standard_"),
        "family": family,
        "locations": [region],
        "locationInfo": [{"location": region, "zones": ["1", "2", "3"], "zoneDetails": []}],
        "capabilities": [
            {"name": "vCPUs", "value": str(vcpus)},
            {"name": "MemoryGB", "value": str(memory_gb)},
            {"name": "GPUs", "value": str(gpus)},
            {"name": "LowPriorityCapable", "value": "True"},
        ],
        "restrictions": list(restrictions),
    }


def zone_restriction(
    *zones: str, region: str = "westeurope", reason: str = "NotAvailableForSubscription"
) -> dict[str, Any]:
    return {
        "type": "Zone",
        "values": [region],
        "restrictionInfo": {"locations": [region], "zones": list(zones)},
        "reasonCode": reason,
    }


def location_restriction(
    region: str = "westeurope", reason: str = "NotAvailableForSubscription"
) -> dict[str, Any]:
    return {
        "type": "Location",
        "values": [region],
        "restrictionInfo": {"locations": [region]},
        "reasonCode": reason,
    }


def usage(name: str, current: int, limit: int) -> dict[str, Any]:
    return {"unit": "Count", "currentValue": current, "limit": limit, "name": {"value": name}}


A100_FAMILY = "standardNCADSA100v4Family"
T4_FAMILY = "standardNCASv3_T4Family"
WESTEUROPE_SKUS = [
    gpu_sku("Standard_NC24ads_A100_v4", A100_FAMILY, 24, 220, 1),
    gpu_sku("Standard_NC96ads_A100_v4", A100_FAMILY, 96, 880, 4),
    gpu_sku("Standard_NC4as_T4_v3", T4_FAMILY, 4, 28, 1),
    gpu_sku("Standard_NC64as_T4_v3", T4_FAMILY, 64, 440, 4),
    gpu_sku("Standard_NC40ads_H100_v5", "standardNCadsH100v5Family", 40, 320, 1),
    gpu_sku("Standard_NV6ads_A10_v5", "standardNVADSA10v5Family", 6, 55, 1),
]


def quotes_by_offer(quotes: list[PriceQuote]) -> dict[tuple[str, str, Market], float]:
    return {(q.offer.region, q.offer.instance_type, q.offer.market): q.usd_per_hour for q in quotes}


def signals_by_key(
    signals: list[CapacitySignal],
) -> dict[tuple[CapacityKind, str | None, str | None], float]:
    return {(s.kind, s.instance_type, s.zone): s.value for s in signals}


# -- options ----------------------------------------------------------------------


def test_build_with_only_regions_gives_a_prices_only_source_without_any_call() -> None:
    source = build("azure", {"regions": ["westeurope", "northeurope"]}, timeout=5)

    assert source.name == "azure"
    assert source.options.arm_endpoint == "https://management.azure.com"
    assert source.options.retail_prices_url == "https://prices.azure.com/api/retail/prices"
    assert source.options.sku_families == ("Standard_N[CDV]*",)
    assert source.uses_arm is False
    assert source.fetch_instance_types() == []
    assert source.fetch_capacity(now=NOW) == []


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "regions"),
        ({"regions": []}, "regions"),
        ({"regions": ["West Europe"]}, "regions"),
        ({"regions": ["westeurope", "westeurope"]}, "regions"),
        ({"regions": ["westeurope"], "colour": "blue"}, "colour"),
        ({"regions": ["westeurope"], "subscription_id": "my-sub"}, "subscription_id"),
        (
            {"regions": ["westeurope"], "arm_endpoint": "http://management.azure.com"},
            "arm_endpoint",
        ),
        (
            {"regions": ["westeurope"], "retail_prices_url": "ftp://prices.azure.com"},
            "retail_prices_url",
        ),
        ({"regions": ["westeurope"], "credential": "magic"}, "credential"),
        ({"regions": ["westeurope"], "sku_families": []}, "sku_families"),
        ({"regions": ["westeurope"], "credential": "default"}, "subscription_id"),
    ],
)
def test_invalid_options_are_a_config_error_naming_the_key(
    options: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build("azure-test", options, timeout=5)

    assert caught.value.source == "sources.azure-test.options"
    assert caught.value.key is not None and caught.value.key.split(".")[0] == key


def test_an_unknown_option_error_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown option; known: regions, subscription_id"):
        build("azure-test", {"regions": ["westeurope"], "region": "x"}, timeout=5)


# -- prices -------------------------------------------------------------------------


def test_prices_follow_next_page_link_until_it_is_null(fake: FakeAzure) -> None:
    skus = [f"Standard_NC{n}as_T4_v3" for n in (4, 8, 16, 64)] + [
        "Standard_NC24ads_A100_v4",
        "Standard_NC48ads_A100_v4",
    ]
    fake.prices["westeurope"] = [price_item(sku, 1.0 + i) for i, sku in enumerate(skus)]
    fake.price_page_size = 2

    quotes = make_source(fake).fetch_prices(since=None, now=NOW)

    assert sorted(q.offer.instance_type for q in quotes) == sorted(skus)
    pages = [seen for seen in fake.requests if seen.route == "prices"]
    assert [seen.query.get("$skip") for seen in pages] == [None, ["2"], ["4"]]


def test_prices_ask_for_the_documented_api_version_and_case_sensitive_filter(
    fake: FakeAzure,
) -> None:
    make_source(fake, regions=["westeurope", "northeurope"]).fetch_prices(since=None, now=NOW)

    asked = [seen.query for seen in fake.requests]
    assert [q["api-version"] for q in asked] == [["2023-01-01-preview"]] * 2
    assert [q["$filter"] for q in asked] == [
        [
            f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' "
            "and priceType eq 'Consumption'"
        ]
        for region in ("westeurope", "northeurope")
    ]


def test_windows_low_priority_promo_devtest_reservation_and_dedicated_host_rows_are_excluded(
    fake: FakeAzure,
) -> None:
    fake.prices["westeurope"] = [
        price_item(price=4.775),
        price_item(price=5.88, product="Virtual Machines NCadsA100v4 Series Windows"),
        price_item(price=0.95, meterName="NC24ads A100 v4 Low Priority"),
        price_item("Standard_NC24ads_A100_v4_Promo", 2.0),
        price_item(price=3.1, type="DevTestConsumption"),
        price_item(price=26000.0, type="Reservation", reservationTerm="1 Year"),
        price_item(price=9.0, product="NCadsA100v4 Series Dedicated Host"),
        price_item(price=3000.0, unitOfMeasure="1/Month"),
        price_item(price=0.0, spot=True),
        price_item("Standard_D4s_v3", 0.2, product="Virtual Machines DSv3 Series"),
    ]

    quotes = make_source(fake).fetch_prices(since=None, now=NOW)

    assert quotes_by_offer(quotes) == {
        ("westeurope", "Standard_NC24ads_A100_v4", Market.ON_DEMAND): 4.775
    }


def test_spot_meters_and_plain_meters_become_spot_and_on_demand_offers(fake: FakeAzure) -> None:
    fake.prices["westeurope"] = [
        price_item(price=4.775),
        price_item(price=1.097295, spot=True),
    ]

    quotes = make_source(fake).fetch_prices(since=None, now=NOW)

    assert quotes_by_offer(quotes) == {
        ("westeurope", "Standard_NC24ads_A100_v4", Market.ON_DEMAND): 4.775,
        ("westeurope", "Standard_NC24ads_A100_v4", Market.SPOT): 1.097295,
    }
    spot = next(q for q in quotes if q.offer.market is Market.SPOT)
    assert spot.offer.provider == "azure"
    assert spot.offer.zone is None
    assert spot.offer.key == "azure:westeurope:-:Standard_NC24ads_A100_v4:spot"
    assert spot.observed_at == NOW
    assert spot.source == "azure-test"


def test_recorded_radar_items_reproduce_the_world_catalog_rows_exactly(fake: FakeAzure) -> None:
    for region in ("northeurope", "westeurope"):
        fake.prices[region] = json.loads((DATA / f"retail_prices.{region}.json").read_text())
    fake.price_page_size = 14  # both regions arrive on three pages (40 and 29 items)

    quotes = make_source(fake, regions=["northeurope", "westeurope"]).fetch_prices(
        since=None, now=NOW
    )

    expected = {}
    with (DATA / "azure_gpu_catalog_world.radar_rows.csv").open(newline="") as rows:
        for row in csv.DictReader(rows):
            key = (row["region"], row["instance_type"])
            expected[(*key, Market.ON_DEMAND)] = float(row["ondemand_usd_per_hour"])
            expected[(*key, Market.SPOT)] = float(row["spot_usd_per_hour"])
    assert len(expected) == 24
    assert quotes_by_offer(quotes) == expected
    assert [seen.route for seen in fake.requests].count("prices") == 3 + 3


def test_several_prices_for_one_offer_resolve_to_the_newest_primary_meter(
    fake: FakeAzure,
) -> None:
    fake.prices["westeurope"] = [
        price_item(
            price=1.0, effectiveStartDate="2026-08-01T00:00:00Z", isPrimaryMeterRegion=False
        ),
        price_item(price=2.0, effectiveStartDate="2025-01-01T00:00:00Z", isPrimaryMeterRegion=True),
        price_item(price=3.0, effectiveStartDate="2026-07-01T00:00:00Z", isPrimaryMeterRegion=True),
        price_item(price=0.5, spot=True, effectiveStartDate="2026-06-01T00:00:00Z"),
        price_item(price=0.7, spot=True, effectiveStartDate="2026-08-01T00:00:00Z"),
    ]

    quotes = make_source(fake).fetch_prices(since=None, now=NOW)

    assert quotes_by_offer(quotes) == {
        ("westeurope", "Standard_NC24ads_A100_v4", Market.ON_DEMAND): 3.0,
        ("westeurope", "Standard_NC24ads_A100_v4", Market.SPOT): 0.7,
    }


def test_a_throttled_price_fetch_carries_retry_after_and_the_next_call_succeeds(
    fake: FakeAzure,
) -> None:
    fake.prices["westeurope"] = [price_item()]
    fake.throttle("prices", retry_after="12")
    source = make_source(fake)

    with pytest.raises(Throttled) as caught:
        source.fetch_prices(since=None, now=NOW)
    assert caught.value.retry_after == 12.0
    assert caught.value.source == "azure-test"

    assert len(source.fetch_prices(since=None, now=NOW)) == 1


def test_a_price_server_error_is_unavailable(fake: FakeAzure) -> None:
    fake.fail("prices", status=503)

    with pytest.raises(Unavailable, match="HTTP 503"):
        make_source(fake).fetch_prices(since=None, now=NOW)


def test_a_price_fetch_slower_than_the_timeout_is_unavailable(fake: FakeAzure) -> None:
    fake.stall("prices", seconds=3)

    with pytest.raises(Unavailable, match="timed out"):
        make_source(fake, timeout=0.3).fetch_prices(since=None, now=NOW)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"retailPrice": None}, "Items[1].retailPrice"),
        ({"retailPrice": "4.775"}, "Items[1].retailPrice"),
        ({"retailPrice": True}, "Items[1].retailPrice"),
        ({"retailPrice": -1}, "Items[1].retailPrice"),
        ({"armSkuName": None}, "Items[1].armSkuName"),
        ({"currencyCode": "EUR"}, "Items[1].currencyCode"),
        ({"armRegionName": "WestEurope"}, "Items[1].armRegionName"),
        ({"effectiveStartDate": "last tuesday"}, "Items[1].effectiveStartDate"),
    ],
)
def test_a_malformed_item_fails_the_whole_fetch_naming_the_field(
    fake: FakeAzure, change: dict[str, Any], field: str
) -> None:
    bad = {key: value for key, value in price_item(spot=True).items() if key not in change}
    bad.update({key: value for key, value in change.items() if value is not None})
    fake.prices["westeurope"] = [price_item(), bad]

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_prices(since=None, now=NOW)

    assert caught.value.field == field
    assert field in str(caught.value)


def test_a_malformed_item_on_a_later_page_still_fails_the_whole_fetch(fake: FakeAzure) -> None:
    bad = price_item("Standard_NC48ads_A100_v4")
    del bad["retailPrice"]
    fake.prices["westeurope"] = [price_item(), bad]
    fake.price_page_size = 1

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_prices(since=None, now=NOW)

    assert caught.value.field == "Items[0].retailPrice"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"<html>maintenance</html>", None),
        (b'{"NextPageLink": null}', "Items"),
        (b'{"Items": {}, "NextPageLink": null}', "Items"),
        (
            b'{"Items": [], "NextPageLink": "https://prices.example.com/api?$skip=9"}',
            "NextPageLink",
        ),
    ],
)
def test_a_malformed_price_page_is_bad_payload(
    fake: FakeAzure, body: bytes, field: str | None
) -> None:
    fake.malformed("prices", body)

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_prices(since=None, now=NOW)

    assert caught.value.field == field


def test_empty_items_give_no_quotes(fake: FakeAzure) -> None:
    fake.prices["westeurope"] = []

    assert make_source(fake).fetch_prices(since=None, now=NOW) == []


def test_sku_families_narrow_the_priced_skus(fake: FakeAzure) -> None:
    fake.prices["westeurope"] = [
        price_item("Standard_NC24ads_A100_v4", 4.775),
        price_item("Standard_NC4as_T4_v3", 0.658),
    ]

    quotes = make_source(fake, sku_families=["Standard_NC*_T4_v3"]).fetch_prices(
        since=None, now=NOW
    )

    assert [q.offer.instance_type for q in quotes] == ["Standard_NC4as_T4_v3"]


# -- instance types -------------------------------------------------------------------


def test_instance_types_come_from_the_gpu_resource_skus(fake: FakeAzure) -> None:
    fake.skus["westeurope"] = WESTEUROPE_SKUS

    types = {t.name: t for t in make_source(fake).fetch_instance_types()}

    assert sorted(types) == sorted(sku["name"] for sku in WESTEUROPE_SKUS)
    shapes = {
        name: (t.vcpus, t.memory_gib, t.accelerator, t.accelerator_count, t.accelerator_memory_gib)
        for name, t in types.items()
        if name != "Standard_NV6ads_A10_v5"
    }
    assert shapes == {
        "Standard_NC24ads_A100_v4": (24, 220, "A100-80GB", 1, 80),
        "Standard_NC96ads_A100_v4": (96, 880, "A100-80GB", 4, 80),
        "Standard_NC4as_T4_v3": (4, 28, "T4", 1, 16),
        "Standard_NC64as_T4_v3": (64, 440, "T4", 4, 16),
        "Standard_NC40ads_H100_v5": (40, 320, "H100-NVL", 1, 94),
    }
    assert {t.provider for t in types.values()} == {"azure"}


def test_a_partitioned_gpu_size_gets_its_share_of_one_gpu(fake: FakeAzure) -> None:
    fake.skus["westeurope"] = WESTEUROPE_SKUS  # the SKU API says "GPUs": "1" for NV6ads

    types = {t.name: t for t in make_source(fake).fetch_instance_types()}

    a10 = types["Standard_NV6ads_A10_v5"]
    assert a10.accelerator == "A10"
    assert a10.accelerator_count == pytest.approx(1 / 6)
    assert a10.accelerator_memory_gib == 24


def test_the_recorded_sku_list_yields_only_its_gpu_sku(fake: FakeAzure) -> None:
    fake.skus["eastus"] = json.loads((DATA / "resource_skus.eastus.json").read_text())["value"]

    types = make_source(fake, regions=["eastus"]).fetch_instance_types()

    assert [(t.name, t.accelerator, t.accelerator_count, t.vcpus, t.memory_gib) for t in types] == [
        ("Standard_NV6", "M60", 1, 6, 56)
    ]


def test_resource_skus_follow_next_link_paging(fake: FakeAzure) -> None:
    fake.skus["westeurope"] = WESTEUROPE_SKUS
    fake.sku_page_size = 2

    types = make_source(fake).fetch_instance_types()

    assert len(types) == len(WESTEUROPE_SKUS)
    assert [seen.route for seen in fake.requests] == ["skus"] * 3


def test_arm_calls_send_the_bearer_token_to_the_loopback_endpoint(fake: FakeAzure) -> None:
    make_source(fake).fetch_instance_types()

    assert fake.requests[0].headers["Authorization"] == "Bearer fake-token"
    assert fake.requests[0].query["$filter"] == ["location eq 'westeurope'"]


@pytest.mark.parametrize(
    ("sku", "expected"),
    [
        ("Standard_NC24ads_A100_v4", ("A100-80GB", 80)),
        ("Standard_ND96asr_A100_v4", ("A100", 40)),
        ("Standard_ND96amsr_A100_v4", ("A100-80GB", 80)),
        ("Standard_ND96isr_H100_v5", ("H100", 80)),
        ("Standard_NC80adis_H100_v5", ("H100-NVL", 94)),
        ("Standard_ND96isr_H200_v5", ("H200", 141)),
        ("Standard_ND96isr_MI300X_v5", ("MI300X", 192)),
        ("Standard_NC4as_T4_v3", ("T4", 16)),
        ("Standard_NV36ads_A10_v5", ("A10", 24)),
        ("Standard_NC8ads_A10_v4", ("A10", 24)),
        ("Standard_NC24s_v3", ("V100", 16)),
        ("Standard_ND40rs_v2", ("V100-32GB", 32)),
        ("Standard_NV12s_v3", ("M60", 8)),
        ("Standard_NC6", ("K80", 12)),
        ("Standard_D4s_v3", None),
        ("Standard_NC128ds_xl_RTXPRO6000BSE_v6", None),
    ],
)
def test_the_gpu_model_is_read_from_the_sku_name(
    sku: str, expected: tuple[str, float] | None
) -> None:
    assert gpu_model(sku) == expected


# -- capacity ------------------------------------------------------------------------


def test_an_unrestricted_sku_is_available_in_the_region(fake: FakeAzure) -> None:
    fake.skus["westeurope"] = [WESTEUROPE_SKUS[0]]

    signals = make_source(fake).fetch_capacity(now=NOW)

    assert signals_by_key(signals) == {
        (CapacityKind.AVAILABLE, "Standard_NC24ads_A100_v4", None): 1
    }
    assert {(s.provider, s.region, s.observed_at, s.source) for s in signals} == {
        ("azure", "westeurope", NOW, "azure-test")
    }


@pytest.mark.parametrize("reason", ["NotAvailableForSubscription", "QuotaId"])
def test_a_location_restriction_makes_the_sku_unavailable_in_the_region(
    fake: FakeAzure, reason: str
) -> None:
    fake.skus["westeurope"] = [
        gpu_sku(
            "Standard_NC24ads_A100_v4",
            A100_FAMILY,
            24,
            220,
            1,
            location_restriction(reason=reason),
            zone_restriction("1", "2", "3", reason=reason),
        )
    ]

    signals = make_source(fake).fetch_capacity(now=NOW)

    assert signals_by_key(signals) == {
        (CapacityKind.AVAILABLE, "Standard_NC24ads_A100_v4", None): 0
    }


def test_a_zone_restriction_makes_the_sku_unavailable_in_those_zones_only(
    fake: FakeAzure,
) -> None:
    fake.skus["westeurope"] = [
        gpu_sku("Standard_NC24ads_A100_v4", A100_FAMILY, 24, 220, 1, zone_restriction("3"))
    ]

    signals = make_source(fake).fetch_capacity(now=NOW)

    assert signals_by_key(signals) == {
        (CapacityKind.AVAILABLE, "Standard_NC24ads_A100_v4", None): 1,
        (CapacityKind.AVAILABLE, "Standard_NC24ads_A100_v4", "3"): 0,
    }


def test_the_recorded_zone_restriction_of_nv6_gives_three_unavailable_zones(
    fake: FakeAzure,
) -> None:
    fake.skus["eastus"] = json.loads((DATA / "resource_skus.eastus.json").read_text())["value"]

    signals = make_source(fake, regions=["eastus"]).fetch_capacity(now=NOW)

    assert signals_by_key(signals) == {
        (CapacityKind.AVAILABLE, "Standard_NV6", None): 1,
        (CapacityKind.AVAILABLE, "Standard_NV6", "1"): 0,
        (CapacityKind.AVAILABLE, "Standard_NV6", "2"): 0,
        (CapacityKind.AVAILABLE, "Standard_NV6", "3"): 0,
    }


def test_family_vcpu_quota_becomes_free_gpus_per_instance_type(fake: FakeAzure) -> None:
    fake.skus["westeurope"] = WESTEUROPE_SKUS[:4]
    fake.usages["westeurope"] = [
        usage("cores", 100, 1000),
        usage(A100_FAMILY, 24, 120),  # 96 vCPUs free
        usage(T4_FAMILY, 0, 24),  # 24 vCPUs free
        usage("lowPriorityCores", 0, 100),
    ]

    signals = make_source(fake).fetch_capacity(now=NOW)

    quota = {s.instance_type: s.value for s in signals if s.kind is CapacityKind.QUOTA_GPUS_FREE}
    assert quota == {
        "Standard_NC24ads_A100_v4": 4,  # 4 VMs x 1 GPU
        "Standard_NC96ads_A100_v4": 4,  # 1 VM x 4 GPUs
        "Standard_NC4as_T4_v3": 6,  # 6 VMs x 1 GPU
        "Standard_NC64as_T4_v3": 0,  # needs 64 vCPUs
    }
    assert {s.zone for s in signals if s.kind is CapacityKind.QUOTA_GPUS_FREE} == {None}


def test_the_regional_vcpu_quota_caps_the_family_quota(fake: FakeAzure) -> None:
    fake.skus["westeurope"] = WESTEUROPE_SKUS[:2]
    fake.usages["westeurope"] = [usage("cores", 950, 1000), usage(A100_FAMILY, 24, 120)]

    signals = make_source(fake).fetch_capacity(now=NOW)

    assert (
        signals_by_key(signals)[(CapacityKind.QUOTA_GPUS_FREE, "Standard_NC24ads_A100_v4", None)]
        == 2
    )  # 50 vCPUs free in the region
    assert (
        signals_by_key(signals)[(CapacityKind.QUOTA_GPUS_FREE, "Standard_NC96ads_A100_v4", None)]
        == 0
    )


def test_a_sku_without_a_family_quota_gets_no_on_demand_quota_signal(fake: FakeAzure) -> None:
    fake.skus["westeurope"] = [WESTEUROPE_SKUS[0]]
    fake.usages["westeurope"] = [usage("cores", 0, 100)]

    signals = make_source(fake).fetch_capacity(now=NOW)

    assert {s.kind for s in signals} == {CapacityKind.AVAILABLE}


def test_the_low_priority_vcpu_quota_becomes_free_spot_gpus(fake: FakeAzure) -> None:
    fake.skus["westeurope"] = WESTEUROPE_SKUS[:2]
    fake.usages["westeurope"] = [usage("cores", 0, 100), usage("lowPriorityCores", 52, 100)]

    signals = make_source(fake).fetch_capacity(now=NOW)

    spot = {
        s.instance_type: s.value for s in signals if s.kind is CapacityKind.QUOTA_SPOT_GPUS_FREE
    }
    assert spot == {
        "Standard_NC24ads_A100_v4": 2,  # 48 vCPUs free: 2 VMs x 1 GPU
        "Standard_NC96ads_A100_v4": 0,  # needs 96 vCPUs
    }


def test_credential_none_skips_skus_and_usages(fake: FakeAzure) -> None:
    source = make_source(fake, credential="none")

    assert source.fetch_instance_types() == []
    assert source.fetch_capacity(now=NOW) == []
    assert fake.requests == []


# -- ARM errors -----------------------------------------------------------------------


def test_a_throttled_arm_call_carries_retry_after_and_the_next_call_succeeds(
    fake: FakeAzure,
) -> None:
    fake.skus["westeurope"] = WESTEUROPE_SKUS
    fake.throttle("skus", retry_after="7")
    source = make_source(fake)

    with pytest.raises(Throttled) as caught:
        source.fetch_instance_types()
    assert caught.value.retry_after == 7.0
    assert fake.routes() == ["skus"]  # the SDK did not retry on its own

    assert len(source.fetch_instance_types()) == len(WESTEUROPE_SKUS)


@pytest.mark.parametrize("route", ["skus", "usages"])
def test_an_arm_server_error_is_unavailable(fake: FakeAzure, route: str) -> None:
    fake.fail(route, status=500)

    with pytest.raises(Unavailable, match="HTTP 500"):
        make_source(fake).fetch_capacity(now=NOW)


def test_an_arm_call_slower_than_the_timeout_is_unavailable(fake: FakeAzure) -> None:
    fake.stall("skus", seconds=3)

    with pytest.raises(Unavailable, match="timed out"):
        make_source(fake, timeout=0.3).fetch_instance_types()


def test_arm_refusing_the_token_is_auth_failed(fake: FakeAzure) -> None:
    fake.fail("skus", status=401, code="InvalidAuthenticationToken")

    with pytest.raises(AuthFailed, match="ARM refused the credentials"):
        make_source(fake).fetch_instance_types()


def test_a_forbidden_arm_call_is_auth_failed_naming_the_permission(fake: FakeAzure) -> None:
    fake.fail("usages", status=403, code="AuthorizationFailed")

    with pytest.raises(AuthFailed, match=r"Microsoft\.Compute/locations/usages/read"):
        make_source(fake).fetch_capacity(now=NOW)


def test_missing_credentials_are_auth_failed_saying_how_to_provide_them(
    fake: FakeAzure, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.identity import DefaultAzureCredential

    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    # Only the environment credential: the others would probe IMDS or run `az`.
    credential = DefaultAzureCredential(
        exclude_workload_identity_credential=True,
        exclude_managed_identity_credential=True,
        exclude_shared_token_cache_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_interactive_browser_credential=True,
        exclude_broker_credential=True,
    )
    try:
        with pytest.raises(AuthFailed) as caught:
            make_source(fake, token_credential=credential).fetch_instance_types()
    finally:
        credential.close()

    message = str(caught.value)
    assert "could not get an Azure token" in message
    assert "AZURE_CLIENT_ID" in message and "az login" in message
    assert 'credential = "none"' in message
    assert fake.requests == []


@pytest.mark.parametrize("route", ["skus", "usages"])
def test_an_arm_body_that_is_not_json_is_bad_payload(fake: FakeAzure, route: str) -> None:
    fake.malformed(route, b"<html>gateway</html>")

    with pytest.raises(BadPayload, match="not JSON"):
        make_source(fake).fetch_capacity(now=NOW)


@pytest.mark.parametrize(
    ("capabilities", "field"),
    [
        ([{"name": "GPUs", "value": "1"}, {"name": "MemoryGB", "value": "220"}], "vCPUs"),
        (
            [
                {"name": "GPUs", "value": "1"},
                {"name": "vCPUs", "value": "lots"},
                {"name": "MemoryGB", "value": "220"},
            ],
            "vCPUs",
        ),
    ],
)
def test_a_malformed_sku_capability_is_bad_payload_naming_it(
    fake: FakeAzure, capabilities: list[dict[str, str]], field: str
) -> None:
    sku = gpu_sku("Standard_NC24ads_A100_v4", A100_FAMILY, 24, 220, 1)
    sku["capabilities"] = capabilities
    fake.skus["westeurope"] = [WESTEUROPE_SKUS[2], sku]

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_instance_types()

    assert caught.value.field == f"resourceSkus(westeurope).value[1].capabilities.{field}"


def test_a_sku_list_with_a_non_object_item_is_bad_payload(fake: FakeAzure) -> None:
    fake.malformed("skus", b'{"value": ["Standard_NC24ads_A100_v4"]}')

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_instance_types()

    assert caught.value.field == "resourceSkus(westeurope).value[0]"


def test_a_usage_without_a_numeric_limit_is_bad_payload_naming_it(fake: FakeAzure) -> None:
    fake.usages["westeurope"] = [{"currentValue": 0, "limit": "many", "name": {"value": "cores"}}]

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_capacity(now=NOW)

    assert caught.value.field == "usages(westeurope).value[0].limit"


def test_the_fake_serves_a_scripted_reply_once(fake: FakeAzure) -> None:
    fake.script("prices", Reply(502, b"{}"))

    with pytest.raises(Unavailable):
        make_source(fake).fetch_prices(since=None, now=NOW)
    assert make_source(fake).fetch_prices(since=None, now=NOW) == []
