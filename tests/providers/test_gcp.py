"""The GCP adapter, driven through the real google-cloud-compute client and httpx
against a local fake of Compute Engine and the Cloud Billing Catalog
(``tests/fakes/gcp.py``). Nothing here reaches a Google host."""

from __future__ import annotations

import csv
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from arbiter.domain.market import CapacityKind, InstanceType, PriceQuote
from arbiter.errors import AuthFailed, BadPayload, ConfigError, Throttled, Unavailable
from providers.gcp import GcpSource, build
from providers.registry import build_source
from tests.fakes.gcp import API_KEY, FIXTURES, PROJECT, FakeGcp

NOW = datetime(2025, 10, 2, 4, 0, tzinfo=UTC)
SHORT_TIMEOUT = 0.3


@pytest.fixture
def fake() -> Iterator[FakeGcp]:
    with FakeGcp.from_fixtures() as server:
        yield server


def make_source(fake: FakeGcp, **overrides: Any) -> GcpSource:
    options: dict[str, Any] = {
        "project": PROJECT,
        "compute_endpoint": fake.url,
        "billing_endpoint": fake.url,
        "anonymous": True,
        "api_key": API_KEY,
    }
    options.update(overrides)
    timeout = options.pop("timeout", 5.0)
    options = {k: v for k, v in options.items() if v is not None}
    return build("gcp-test", options, timeout=timeout)


def prices(fake: FakeGcp, **overrides: Any) -> dict[str, PriceQuote]:
    quotes = make_source(fake, **overrides).fetch_prices(since=None, now=NOW)
    return {q.offer.key: q for q in quotes}


def types_by_name(fake: FakeGcp, **overrides: Any) -> dict[str, InstanceType]:
    return {t.name: t for t in make_source(fake, **overrides).fetch_instance_types()}


def sku(fake: FakeGcp, description: str) -> dict[str, Any]:
    (found,) = [s for s in fake.skus if s["description"] == description]
    return found


def key(region: str, instance_type: str, market: str) -> str:
    return f"gcp:{region}:-:{instance_type}:{market}"


def published_prices() -> list[tuple[str, str, str, float]]:
    rows = []
    with (FIXTURES / "catalog_2025-10-02.excerpt.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            for market, column in (
                ("on-demand", "ondemand_usd_per_hour"),
                ("spot", "spot_usd_per_hour"),
            ):
                if row[column]:
                    rows.append((row["machine_type"], row["region"], market, float(row[column])))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- options ------------------------------------------------------------------------


def test_a_project_alone_is_enough_to_build_a_source() -> None:
    source = build("gcp", {"project": "my-project-123"}, timeout=10)

    assert source.name == "gcp"
    assert source.options.machine_families == ["a2", "a3", "g2", "g4"]
    assert source.options.billing_endpoint == "https://cloudbilling.googleapis.com"
    assert source.options.regions is None
    assert source.options.anonymous is False


def test_the_registry_builds_a_gcp_source_by_kind() -> None:
    source = build_source("gcp", "gcp-main", {"project": "my-project-123"}, timeout=10)

    assert isinstance(source, GcpSource)


def test_an_unknown_option_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        build("gcp", {"project": "my-project-123", "region": ["us-central1"]}, timeout=10)

    assert caught.value.source == "sources.gcp.options"
    assert caught.value.key == "region"


def test_a_missing_project_is_a_config_error_naming_project() -> None:
    with pytest.raises(ConfigError) as caught:
        build("gcp", {}, timeout=10)

    assert caught.value.key == "project"


@pytest.mark.parametrize(
    ("options", "bad_key"),
    [
        ({"regions": ["US Central"]}, "regions"),
        ({"regions": []}, "regions"),
        ({"machine_families": []}, "machine_families"),
        ({"machine_families": ["a3)|(.*"]}, "machine_families"),
        ({"compute_endpoint": "127.0.0.1:8080"}, "compute_endpoint"),
        ({"billing_endpoint": "ftp://example.com"}, "billing_endpoint"),
        ({"billing_endpoint": "http://billing.example.com"}, "billing_endpoint"),
        ({"compute_endpoint": "http://10.0.0.8:8080"}, "compute_endpoint"),
        ({"anonymous": "sometimes"}, "anonymous"),
        ({"project": "Not A Project"}, "project"),
    ],
)
def test_an_invalid_option_is_a_config_error_naming_its_key(
    options: dict[str, Any], bad_key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build("gcp", {"project": "my-project-123", **options}, timeout=10)

    assert caught.value.key == bad_key
    assert str(caught.value).startswith(f"sources.gcp.options: {bad_key}: ")


def test_the_api_key_never_shows_in_the_source_or_its_options() -> None:
    source = build("gcp", {"project": "my-project-123", "api_key": "AIza-secret"}, timeout=10)

    assert "AIza-secret" not in repr(source)
    assert "AIza-secret" not in repr(source.options)
    assert "AIza-secret" not in str(source.options.model_dump())


# -- instance types -----------------------------------------------------------------


def test_instance_types_are_the_accelerator_optimized_types_once_each(fake: FakeGcp) -> None:
    types = make_source(fake).fetch_instance_types()

    names = [t.name for t in types]
    assert sorted(names) == [
        "a2-highgpu-1g",
        "a2-highgpu-8g",
        "a2-megagpu-16g",
        "a2-ultragpu-1g",
        "a2-ultragpu-8g",
        "a3-highgpu-1g",
        "a3-highgpu-8g",
        "a3-megagpu-8g",
        "g2-standard-4",
        "g2-standard-48",
        "g2-standard-8",
        "g2-standard-96",
    ]


def test_an_instance_type_carries_its_shape_and_canonical_accelerator(fake: FakeGcp) -> None:
    types = types_by_name(fake)

    a2 = types["a2-highgpu-1g"]
    assert (a2.provider, a2.vcpus, a2.memory_gib) == ("gcp", 12, 85)
    assert (a2.accelerator, a2.accelerator_count, a2.accelerator_memory_gib) == ("A100", 1, 40)
    assert types["a2-ultragpu-8g"].accelerator == "A100-80GB"
    assert types["a2-ultragpu-8g"].accelerator_memory_gib == 80
    assert types["a3-megagpu-8g"].accelerator == "H100"
    assert types["g2-standard-48"].accelerator_count == 4
    assert types["a3-highgpu-8g"].memory_gib == 1872


def test_machine_types_are_read_across_pages(fake: FakeGcp) -> None:
    fake.page_size["machine_types"] = 4  # six zones: two pages

    names = set(types_by_name(fake))

    requests = fake.requests_to("machine_types")
    assert len(requests) == 2
    assert requests[1].query["pageToken"] == ["4"]
    assert {"a2-highgpu-1g", "a3-megagpu-8g", "g2-standard-96"} <= names


def test_machine_types_are_asked_for_only_in_the_configured_families(fake: FakeGcp) -> None:
    make_source(fake, machine_families=["g2", "a3"]).fetch_instance_types()

    (request,) = fake.requests_to("machine_types")
    assert request.query["filter"] == ['name eq "(a3|g2)-.*"']
    assert request.query["maxResults"] == ["500"]


def test_the_families_are_applied_even_if_the_server_ignores_the_filter(fake: FakeGcp) -> None:
    names = set(types_by_name(fake, machine_families=["g2"]))

    assert names == {"g2-standard-4", "g2-standard-8", "g2-standard-48", "g2-standard-96"}


def test_the_regions_option_limits_the_zones_read(fake: FakeGcp) -> None:
    names = set(types_by_name(fake, regions=["asia-northeast1"]))

    assert names == {"a2-highgpu-1g", "g2-standard-4"}


def test_no_machine_types_make_an_empty_list(fake: FakeGcp) -> None:
    fake.machine_types = {}

    assert make_source(fake).fetch_instance_types() == []


def test_a_machine_type_whose_gpu_arbiter_cannot_name_is_left_out(fake: FakeGcp) -> None:
    odd = json.loads(json.dumps(fake.machine_types["us-central1-b"][0]))
    odd["name"] = "a3-futuregpu-8g"
    odd["accelerators"] = [{"guestAcceleratorType": "nvidia-zz9000", "guestAcceleratorCount": 8}]
    fake.machine_types["us-central1-b"].append(odd)

    names = set(types_by_name(fake))

    assert "a3-futuregpu-8g" not in names
    assert "a3-highgpu-8g" in names


def test_a_machine_type_without_cpus_is_bad_payload_naming_the_field(fake: FakeGcp) -> None:
    del fake.machine_types["us-central1-a"][0]["guestCpus"]

    with pytest.raises(BadPayload) as caught:
        make_source(fake, regions=["us-central1"]).fetch_instance_types()

    assert caught.value.field == "items[zones/us-central1-a].machineTypes[a2-highgpu-1g].guestCpus"


def test_a_machine_type_that_differs_between_zones_is_bad_payload(fake: FakeGcp) -> None:
    fake.machine_types["us-central1-b"][3]["guestCpus"] = 6  # g2-standard-4, 4 in other zones

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_instance_types()

    assert caught.value.field is not None
    assert "g2-standard-4" in caught.value.field


def test_a_machine_type_list_that_is_not_json_is_bad_payload(fake: FakeGcp) -> None:
    fake.reply_raw("machine_types", "<html>Service temporarily moved</html>")

    with pytest.raises(BadPayload, match="does not parse"):
        make_source(fake).fetch_instance_types()


def test_a_machine_type_list_of_the_wrong_shape_is_bad_payload(fake: FakeGcp) -> None:
    fake.reply_raw("machine_types", '{"items": {"zones/us-central1-a": {"machineTypes": 5}}}')

    with pytest.raises(BadPayload, match="machineTypes"):
        make_source(fake).fetch_instance_types()


# -- Compute Engine errors ----------------------------------------------------------


def test_a_compute_429_is_throttled_and_the_next_call_succeeds(fake: FakeGcp) -> None:
    fake.fail("machine_types", 429, reason="rateLimitExceeded", headers={"Retry-After": "7"})
    source = make_source(fake)

    with pytest.raises(Throttled) as caught:
        source.fetch_instance_types()

    assert caught.value.retry_after == 7
    assert isinstance(caught.value.__cause__, Exception)
    assert len(source.fetch_instance_types()) == 12


def test_a_compute_403_rate_limit_is_throttled(fake: FakeGcp) -> None:
    fake.fail("machine_types", 403, reason="rateLimitExceeded")

    with pytest.raises(Throttled):
        make_source(fake).fetch_instance_types()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_compute_5xx_is_unavailable_and_not_retried_by_the_sdk(
    fake: FakeGcp, status: int
) -> None:
    fake.fail("regions", status)

    with pytest.raises(Unavailable):
        make_source(fake).fetch_capacity(now=NOW)

    assert len(fake.requests_to("regions")) == 1


def test_a_compute_call_slower_than_the_timeout_is_unavailable(fake: FakeGcp) -> None:
    fake.stall("machine_types", 5)

    with pytest.raises(Unavailable, match="timed out"):
        make_source(fake, timeout=SHORT_TIMEOUT).fetch_instance_types()


def test_a_refused_connection_to_compute_is_unavailable(fake: FakeGcp) -> None:
    source = make_source(fake, compute_endpoint=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(Unavailable, match="connection failed"):
        source.fetch_instance_types()


def test_a_compute_403_permission_denied_is_auth_failed_with_credentials_help(
    fake: FakeGcp,
) -> None:
    fake.fail(
        "machine_types", 403, reason="forbidden", message="Required 'compute.machineTypes.list'"
    )

    with pytest.raises(AuthFailed) as caught:
        make_source(fake).fetch_instance_types()

    assert "compute.machineTypes.list" in str(caught.value)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(caught.value)


def test_a_compute_401_to_anonymous_credentials_is_auth_failed(fake: FakeGcp) -> None:
    fake.fail("machine_types", 401, reason="required")

    with pytest.raises(AuthFailed, match="gcloud auth application-default login"):
        make_source(fake).fetch_instance_types()


def test_missing_application_default_credentials_are_auth_failed_saying_how_to_fix(
    fake: FakeGcp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    source = make_source(fake, anonymous=False)

    with pytest.raises(AuthFailed) as caught:
        source.fetch_instance_types()

    message = str(caught.value)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message
    assert "gcloud auth application-default login" in message
    assert "anonymous" in message
    assert fake.requests == []


def test_an_unknown_project_is_bad_payload(fake: FakeGcp) -> None:
    with pytest.raises(BadPayload, match="404"):
        make_source(fake, project="someone-elses").fetch_capacity(now=NOW)


# -- capacity -----------------------------------------------------------------------


def quota_signals(fake: FakeGcp, **overrides: Any) -> dict[tuple[str, str | None], float]:
    """The on-demand GPU quota signals, by (region, instance type)."""
    signals = make_source(fake, **overrides).fetch_capacity(now=NOW)
    kinds = {CapacityKind.QUOTA_GPUS_FREE, CapacityKind.QUOTA_SPOT_GPUS_FREE}
    assert {s.kind for s in signals} <= kinds
    return {
        (s.region, s.instance_type): s.value
        for s in signals
        if s.kind is CapacityKind.QUOTA_GPUS_FREE
    }


def test_a_gpu_quota_becomes_a_signal_for_each_machine_type_of_that_gpu(fake: FakeGcp) -> None:
    signals = quota_signals(fake)

    # us-central1 NVIDIA_A100_GPUS: limit 16, usage 4
    assert signals[("us-central1", "a2-highgpu-1g")] == 12
    assert signals[("us-central1", "a2-highgpu-8g")] == 12
    assert signals[("us-central1", "a2-megagpu-16g")] == 12
    # europe-west4: NVIDIA_H100_GPUS 16/8 for highgpu, NVIDIA_H100_MEGA_GPUS 8/0 for megagpu
    assert signals[("europe-west4", "a3-highgpu-8g")] == 8
    assert signals[("europe-west4", "a3-megagpu-8g")] == 8


def test_free_quota_is_never_negative(fake: FakeGcp) -> None:
    signals = quota_signals(fake)

    # us-central1 NVIDIA_L4_GPUS: limit 8, usage 10
    assert signals[("us-central1", "g2-standard-4")] == 0


def test_the_all_regions_gpu_quota_is_one_signal_for_every_type(fake: FakeGcp) -> None:
    signals = quota_signals(fake)

    assert signals[("us-central1", None)] == 20


def test_no_signal_for_a_gpu_the_region_offers_in_none_of_our_types(fake: FakeGcp) -> None:
    signals = quota_signals(fake)

    # us-central1 has NVIDIA_H100_GPUS but no megagpu quota; asia has A100 types only in a2
    assert ("us-central1", "a3-megagpu-8g") not in signals
    assert len([k for k in signals if k[0] == "us-central1"]) == 12


def test_preemptible_quota_is_a_spot_quota_series_of_its_own(fake: FakeGcp) -> None:
    signals = make_source(fake).fetch_capacity(now=NOW)

    # europe-west4 has PREEMPTIBLE_NVIDIA_L4_GPUS 32/0 and NVIDIA_L4_GPUS 8/2: one
    # on-demand and one spot signal per type, each in its own series.
    l4 = {
        s.kind: s.value
        for s in signals
        if (s.region, s.instance_type) == ("europe-west4", "g2-standard-4")
    }
    assert l4 == {CapacityKind.QUOTA_GPUS_FREE: 6, CapacityKind.QUOTA_SPOT_GPUS_FREE: 32}


def test_each_signal_is_observed_now_by_this_source_for_the_whole_region(fake: FakeGcp) -> None:
    signals = make_source(fake).fetch_capacity(now=NOW)

    assert signals
    assert {(s.observed_at, s.source, s.provider, s.zone) for s in signals} == {
        (NOW, "gcp-test", "gcp", None)
    }


def test_the_regions_option_limits_capacity_to_those_regions(fake: FakeGcp) -> None:
    signals = quota_signals(fake, regions=["europe-west4"])

    assert {region for region, _ in signals} == {"europe-west4"}


def test_regions_are_read_across_pages(fake: FakeGcp) -> None:
    fake.page_size["regions"] = 2  # three regions: two pages

    signals = quota_signals(fake)

    assert len(fake.requests_to("regions")) == 2
    assert {region for region, _ in signals} == {"asia-northeast1", "europe-west4", "us-central1"}


# -- prices -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine_type", "region", "market", "published"),
    published_prices(),
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_composed_prices_match_the_published_catalog(
    fake: FakeGcp, machine_type: str, region: str, market: str, published: float
) -> None:
    quotes = prices(fake)

    quote = quotes[key(region, machine_type, market)]
    assert quote.usd_per_hour == pytest.approx(published, rel=0.005)


def test_every_offer_with_complete_skus_is_priced_on_both_markets(fake: FakeGcp) -> None:
    quotes = prices(fake)

    expected = {
        key(region, machine_type, market) for machine_type, region, market, _ in published_prices()
    }
    assert set(quotes) == expected


def test_a_machine_type_without_its_gpu_sku_in_a_region_is_left_out(fake: FakeGcp) -> None:
    quotes = prices(fake)

    # us-central1 has the plain H100 SKU and a Mega one for us-east4 only: never guessed
    assert key("us-central1", "a3-megagpu-8g", "on-demand") not in quotes
    assert key("us-central1", "a3-highgpu-8g", "on-demand") in quotes
    # no SKU covers asia-northeast1 at all
    assert not [k for k in quotes if ":asia-northeast1:" in k]


def test_look_alike_skus_are_never_used_in_place_of_the_real_one(fake: FakeGcp) -> None:
    fake.skus.remove(sku(fake, "A2 Instance Core running in Americas"))

    quotes = prices(fake)

    # "Reserved A2 Instance Core…" and "Commitment v1: A2 Cpu…" remain, and are not used
    assert key("us-central1", "a2-highgpu-1g", "on-demand") not in quotes
    assert key("us-central1", "a2-highgpu-1g", "spot") in quotes


def test_the_mega_h100_sku_never_prices_the_plain_h100_machines(fake: FakeGcp) -> None:
    fake.skus.remove(sku(fake, "Nvidia H100 80GB GPU running in Netherlands"))

    quotes = prices(fake)

    assert key("europe-west4", "a3-highgpu-8g", "on-demand") not in quotes
    assert key("europe-west4", "a3-megagpu-8g", "on-demand") in quotes


def test_the_h100_plus_sku_prices_the_mega_machines(fake: FakeGcp) -> None:
    mega = sku(fake, "Nvidia H100 80GB Mega GPU running in Netherlands")
    mega["description"] = "Nvidia H100 80GB Plus GPU running in Netherlands"

    quotes = prices(fake)

    assert key("europe-west4", "a3-megagpu-8g", "on-demand") in quotes


def test_a_commitment_sku_worded_like_the_on_demand_one_is_ignored(fake: FakeGcp) -> None:
    commitment = json.loads(json.dumps(sku(fake, "G2 Instance Core running in Americas")))
    commitment["category"]["usageType"] = "Commit1Yr"
    commitment["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"]["nanos"] = 1
    fake.skus.append(commitment)

    quotes = prices(fake)

    assert key("us-central1", "g2-standard-4", "on-demand") in quotes


def test_a_family_local_ssd_sku_is_preferred_to_the_generic_one(fake: FakeGcp) -> None:
    a2_before = prices(fake)[key("us-central1", "a2-ultragpu-1g", "on-demand")].usd_per_hour
    own = json.loads(json.dumps(sku(fake, "SSD backed Local Storage")))
    own["description"] = "A3 Instance Local SSD running in Americas"
    own["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"] = {
        "currencyCode": "USD",
        "units": "0",
        "nanos": 0,
    }
    fake.skus.append(own)

    quotes = prices(fake)

    # the A3 SSD is now free; A2 has no SSD SKU of its own and keeps the generic one
    a3 = quotes[key("us-central1", "a3-highgpu-8g", "on-demand")].usd_per_hour
    assert a3 == pytest.approx(88.49 - 6000 * 0.08 / 730, rel=1e-4)
    assert quotes[key("us-central1", "a2-ultragpu-1g", "on-demand")].usd_per_hour == a2_before


def test_a_sku_applies_to_the_regions_it_lists_not_the_place_it_names(fake: FakeGcp) -> None:
    sku(fake, "Nvidia L4 GPU running in Americas")["description"] = (
        "Nvidia L4 GPU running in Lyonesse"
    )
    sku(fake, "G2 Instance Core running in Netherlands")["serviceRegions"] = ["europe-west1"]

    quotes = prices(fake)

    assert key("us-central1", "g2-standard-4", "on-demand") in quotes
    assert key("europe-west4", "g2-standard-4", "on-demand") not in quotes


def test_a_sku_covering_several_regions_prices_each_of_them(fake: FakeGcp) -> None:
    quotes = prices(fake)

    # the recorded A2 SKUs list us-central1, us-east1 and us-west1 in serviceRegions
    assert sku(fake, "A2 Instance Core running in Americas")["serviceRegions"][0] == "us-central1"
    assert quotes[key("us-central1", "a2-highgpu-1g", "on-demand")].usd_per_hour == pytest.approx(
        12 * 0.031611 + 85 * 0.004237 + 2.933908
    )


def test_two_skus_at_different_prices_for_one_component_leave_the_machine_out(
    fake: FakeGcp,
) -> None:
    twin = json.loads(json.dumps(sku(fake, "Nvidia L4 GPU running in Netherlands")))
    twin["skuId"] = "F000-0000-FFFF"
    twin["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"]["units"] = "1"
    fake.skus.append(twin)

    quotes = prices(fake)

    assert key("europe-west4", "g2-standard-4", "on-demand") not in quotes
    assert key("europe-west4", "g2-standard-4", "spot") in quotes


def test_skus_are_read_across_pages(fake: FakeGcp) -> None:
    fake.page_size["skus"] = 30  # 58 SKUs: two pages

    quotes = prices(fake)

    requests = fake.requests_to("skus")
    assert len(requests) == 2
    assert "pageToken" not in requests[0].query
    assert requests[1].query["pageToken"] == ["30"]
    assert all(r.query["currencyCode"] == ["USD"] for r in requests)
    assert len(quotes) == len(published_prices())


def test_quotes_are_observed_now_whatever_since_says(fake: FakeGcp) -> None:
    quotes = make_source(fake).fetch_prices(since=NOW, now=NOW)

    assert quotes
    assert {(q.observed_at, q.source, q.offer.zone) for q in quotes} == {(NOW, "gcp-test", None)}


def test_an_empty_sku_catalog_prices_nothing(fake: FakeGcp) -> None:
    fake.skus = []

    assert make_source(fake).fetch_prices(since=None, now=NOW) == []


def test_a_sku_page_without_a_skus_field_is_an_empty_page(fake: FakeGcp) -> None:
    fake.reply_raw("skus", "{}")

    assert make_source(fake).fetch_prices(since=None, now=NOW) == []


def test_no_machine_types_price_nothing(fake: FakeGcp) -> None:
    fake.machine_types = {}

    assert make_source(fake).fetch_prices(since=None, now=NOW) == []


def test_a_used_sku_without_pricing_info_is_bad_payload_naming_the_field(fake: FakeGcp) -> None:
    used = sku(fake, "G2 Instance Ram running in Americas")
    del used["pricingInfo"]
    index = fake.skus.index(used)

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_prices(since=None, now=NOW)

    assert caught.value.field == f"skus[{index}].pricingInfo"


def test_a_used_sku_in_an_unexpected_unit_is_bad_payload_naming_usage_unit(
    fake: FakeGcp,
) -> None:
    used = sku(fake, "Nvidia L4 GPU running in Americas")
    used["pricingInfo"][0]["pricingExpression"]["usageUnit"] = "mo"
    index = fake.skus.index(used)

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_prices(since=None, now=NOW)

    assert caught.value.field == f"skus[{index}].pricingInfo[0].pricingExpression.usageUnit"


def test_a_used_sku_priced_in_another_currency_is_bad_payload(fake: FakeGcp) -> None:
    used = sku(fake, "A3 Instance Core running in Americas")
    used["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"]["currencyCode"] = (
        "EUR"
    )

    with pytest.raises(BadPayload, match="currencyCode"):
        make_source(fake).fetch_prices(since=None, now=NOW)


def test_a_used_sku_with_a_non_numeric_price_is_bad_payload(fake: FakeGcp) -> None:
    used = sku(fake, "A3 Instance Ram running in Americas")
    used["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"]["units"] = "cheap"

    with pytest.raises(BadPayload, match=r"unitPrice\.units"):
        make_source(fake).fetch_prices(since=None, now=NOW)


def test_an_unused_sku_with_a_broken_rate_card_does_not_stop_prices(fake: FakeGcp) -> None:
    del sku(fake, "Sole Tenancy Instance Core running in Americas")["pricingInfo"]

    assert len(make_source(fake).fetch_prices(since=None, now=NOW)) == len(published_prices())


def test_a_sku_without_a_description_is_bad_payload_naming_it(fake: FakeGcp) -> None:
    del fake.skus[3]["description"]

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_prices(since=None, now=NOW)

    assert caught.value.field == "skus[3].description"


def test_skus_that_are_not_a_list_are_bad_payload(fake: FakeGcp) -> None:
    fake.reply_raw("skus", '{"skus": {"oops": true}}')

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_prices(since=None, now=NOW)

    assert caught.value.field == "skus"


def test_a_sku_body_that_is_not_json_is_bad_payload(fake: FakeGcp) -> None:
    fake.reply_raw("skus", "<html>502 Bad Gateway</html>")

    with pytest.raises(BadPayload, match="not JSON"):
        make_source(fake).fetch_prices(since=None, now=NOW)


def test_a_page_token_that_repeats_is_bad_payload(fake: FakeGcp) -> None:
    fake.reply_raw("skus", '{"skus": [], "nextPageToken": "again"}', times=2)

    with pytest.raises(BadPayload) as caught:
        make_source(fake).fetch_prices(since=None, now=NOW)

    assert caught.value.field == "nextPageToken"


# -- Cloud Billing errors -----------------------------------------------------------


def test_a_billing_429_is_throttled_and_the_next_call_succeeds(fake: FakeGcp) -> None:
    fake.fail("skus", 429, reason="rateLimitExceeded", headers={"Retry-After": "30"})
    source = make_source(fake)

    with pytest.raises(Throttled) as caught:
        source.fetch_prices(since=None, now=NOW)

    assert caught.value.retry_after == 30
    assert len(source.fetch_prices(since=None, now=NOW)) == len(published_prices())


@pytest.mark.parametrize("status", [500, 503])
def test_a_billing_5xx_is_unavailable(fake: FakeGcp, status: int) -> None:
    fake.fail("skus", status)

    with pytest.raises(Unavailable):
        make_source(fake).fetch_prices(since=None, now=NOW)


def test_a_failure_on_the_second_sku_page_fails_the_whole_fetch(fake: FakeGcp) -> None:
    fake.page_size["skus"] = 30
    fake.stall("skus", 0)  # the first page answers normally
    fake.fail("skus", 503)

    with pytest.raises(Unavailable):
        make_source(fake).fetch_prices(since=None, now=NOW)


def test_a_billing_call_slower_than_the_timeout_is_unavailable(fake: FakeGcp) -> None:
    fake.stall("skus", 5)

    with pytest.raises(Unavailable, match="timed out"):
        make_source(fake, timeout=SHORT_TIMEOUT).fetch_prices(since=None, now=NOW)


def test_a_missing_api_key_is_auth_failed_before_any_call(fake: FakeGcp) -> None:
    source = make_source(fake, api_key=None)

    with pytest.raises(AuthFailed, match="API key"):
        source.fetch_prices(since=None, now=NOW)

    assert fake.requests == []


def test_an_invalid_api_key_is_auth_failed(fake: FakeGcp) -> None:
    with pytest.raises(AuthFailed, match="invalid"):
        make_source(fake, api_key="AIza-wrong").fetch_prices(since=None, now=NOW)


def test_a_billing_403_is_auth_failed(fake: FakeGcp) -> None:
    fake.fail("skus", 403, reason="forbidden", message="Cloud Billing API has not been used")

    with pytest.raises(AuthFailed, match="Cloud Billing API has not been used"):
        make_source(fake).fetch_prices(since=None, now=NOW)


def test_the_api_key_travels_in_a_header_never_in_the_url(fake: FakeGcp) -> None:
    make_source(fake).fetch_prices(since=None, now=NOW)

    (request,) = fake.requests_to("skus")
    assert request.headers["x-goog-api-key"] == API_KEY
    assert "key" not in request.query
    assert API_KEY not in request.path


def test_an_error_message_never_contains_the_api_key(fake: FakeGcp) -> None:
    fake.fail("skus", 500, message="boom")

    with pytest.raises(Unavailable) as caught:
        make_source(fake).fetch_prices(since=None, now=NOW)

    assert API_KEY not in str(caught.value)
