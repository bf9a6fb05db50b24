"""The AWS source, driven through the real boto3 and httpx clients on 127.0.0.1 only.

moto (in server mode) answers instance-type discovery with real data and spot price
history with fake constant prices; botocore's Stubber on the source's own clients
gives realistic payloads, paging and errors, and stands in for what moto lacks (the
Pricing API, spot placement scores). The Spot Advisor JSON and the bulk price-list
files come from a local HTTP server or respx.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from botocore.stub import Stubber
from structlog.testing import capture_logs

import providers.aws as aws_module
from arbiter.domain.market import CapacityKind, CapacitySignal, Market, Offer, PriceQuote
from arbiter.errors import AuthFailed, BadPayload, ConfigError, Throttled, Unavailable
from providers.aws import AwsSource, build
from providers.registry import build_source
from tests.fakes.aws import (
    OFFER_FILE_P4D,
    SPOT_ADVISOR_FILE,
    MotoServer,
    Reply,
    StaticHttpServer,
    bulk_price_list_path,
    load_json,
    offer_file_for,
    price_list_items,
    refused_url,
    spot_history_rows,
    use_fake_credentials,
    use_no_credentials,
)

NAME = "aws-main"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TYPES = ["g5.xlarge", "p4d.24xlarge", "p5.48xlarge"]
ADVISOR_URL = "http://127.0.0.1:9/spot-advisor-data.json"
"""Only ever answered by respx: nothing listens on port 9."""

LINUX_FILTERS = [
    {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"},
    {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
    {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
    {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
    {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
    {"Type": "TERM_MATCH", "Field": "licenseModel", "Value": "No License required"},
]
PRODUCTS_REQUEST = {
    "ServiceCode": "AmazonEC2",
    "FormatVersion": "aws_v1",
    "Filters": LINUX_FILTERS,
    "MaxResults": 100,
}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_fake_credentials(monkeypatch, tmp_path)


@pytest.fixture
def make_source(moto: MotoServer) -> Iterator[Callable[..., AwsSource]]:
    """Build sources pointed at moto and at loopback URLs only; close them afterwards."""
    built: list[AwsSource] = []

    def make(timeout: float = 5, **options: Any) -> AwsSource:
        merged = {
            "regions": ["us-east-1"],
            "instance_types": TYPES,
            "endpoint_url": moto.url,
            "pricing_endpoint_url": moto.url,
            "pricing_bulk_url": refused_url(),
            "spot_advisor_url": ADVISOR_URL,
            **options,
        }
        source = build(NAME, {k: v for k, v in merged.items() if v is not None}, timeout=timeout)
        built.append(source)
        return source

    yield make
    for source in built:
        source.close()


@pytest.fixture
def source(make_source: Callable[..., AwsSource]) -> AwsSource:
    return make_source()


@pytest.fixture
def ec2(source: AwsSource) -> Iterator[Stubber]:
    with Stubber(source.ec2_client("us-east-1")) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def pricing(source: AwsSource) -> Iterator[Stubber]:
    with Stubber(source.pricing_client()) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def spot_request(types: list[str] = TYPES, start: datetime = NOW, **extra: Any) -> dict[str, Any]:
    return {
        "InstanceTypes": types,
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": start,
        **extra,
    }


def spot_row(instance_type: str, zone_id: str, price: str, **extra: Any) -> dict[str, Any]:
    return {
        "AvailabilityZone": "us-east-1a",
        "AvailabilityZoneId": zone_id,
        "InstanceType": instance_type,
        "ProductDescription": "Linux/UNIX",
        "SpotPrice": price,
        "Timestamp": NOW - timedelta(hours=3),
        **extra,
    }


def placement_request(region: str = "us-east-1", **extra: Any) -> dict[str, Any]:
    return {
        "InstanceTypes": TYPES,
        "TargetCapacity": 1,
        "TargetCapacityUnitType": "units",
        "SingleAvailabilityZone": True,
        "RegionNames": [region],
        **extra,
    }


def spot_quote(zone: str, instance_type: str, usd: float, at: datetime) -> PriceQuote:
    offer = Offer(
        provider="aws", region="us-east-1", zone=zone, instance_type=instance_type, market="spot"
    )
    return PriceQuote(offer=offer, usd_per_hour=usd, observed_at=at, source=NAME)


def on_demand_quote(instance_type: str, usd: float) -> PriceQuote:
    offer = Offer(
        provider="aws",
        region="us-east-1",
        zone=None,
        instance_type=instance_type,
        market=Market.ON_DEMAND,
    )
    return PriceQuote(offer=offer, usd_per_hour=usd, observed_at=NOW, source=NAME)


def p4d_offer_file() -> dict[str, Any]:
    return load_json(OFFER_FILE_P4D)  # type: ignore[no-any-return]


# -- options ------------------------------------------------------------------------


def test_a_source_without_regions_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        build(NAME, {}, timeout=5)
    assert caught.value.source == f"sources.{NAME}.options"
    assert caught.value.key == "regions"


def test_an_empty_region_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        build(NAME, {"regions": []}, timeout=5)
    assert caught.value.key == "regions"


def test_an_unknown_option_is_a_config_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        build(NAME, {"regions": ["us-east-1"], "regoins": ["eu-west-1"]}, timeout=5)
    assert caught.value.source == f"sources.{NAME}.options"
    assert caught.value.key == "regoins"
    assert "unknown option" in str(caught.value) and "regions" in str(caught.value)


def test_a_malformed_region_id_is_a_config_error_naming_its_position() -> None:
    with pytest.raises(ConfigError) as caught:
        build(NAME, {"regions": ["us-east-1", "Frankfurt"]}, timeout=5)
    assert caught.value.key == "regions.1"
    assert "'Frankfurt'" in str(caught.value)


def test_a_malformed_instance_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        build(NAME, {"regions": ["us-east-1"], "instance_types": ["H100"]}, timeout=5)
    assert caught.value.key == "instance_types.0"


def test_a_pricing_region_without_a_pricing_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        build(NAME, {"regions": ["us-east-1"], "pricing_region": "eu-west-1"}, timeout=5)
    assert caught.value.key == "pricing_region"
    assert "us-east-1" in str(caught.value)


def test_an_endpoint_that_is_not_an_http_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        build(NAME, {"regions": ["us-east-1"], "endpoint_url": "127.0.0.1:5000"}, timeout=5)
    assert caught.value.key == "endpoint_url"


def test_a_plain_http_url_off_the_loopback_interface_is_a_config_error() -> None:
    options = {"regions": ["us-east-1"], "spot_advisor_url": "http://example.com/advisor.json"}
    with pytest.raises(ConfigError) as caught:
        build(NAME, options, timeout=5)
    assert caught.value.key == "spot_advisor_url"
    assert "https" in str(caught.value)


def test_an_unknown_aws_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        build(NAME, {"regions": ["us-east-1"], "profile": "no-such-profile"}, timeout=5)
    assert caught.value.key == "profile"
    assert "no-such-profile" in str(caught.value)


def test_lists_may_be_given_as_comma_separated_strings_as_environment_variables_are() -> None:
    with build(
        NAME, {"regions": "us-east-1, eu-west-1", "instance_types": "g5.xlarge"}, timeout=5
    ) as source:
        assert source.options.regions == ("us-east-1", "eu-west-1")
        assert source.options.instance_types == ("g5.xlarge",)


def test_the_registry_builds_an_aws_source_for_kind_aws() -> None:
    with build_source("aws", NAME, {"regions": ["us-east-1"]}, timeout=5) as source:
        assert isinstance(source, AwsSource)
        assert source.name == NAME


def test_clients_make_one_attempt_with_the_source_timeout(source: AwsSource) -> None:
    config = source.ec2_client("us-east-1").meta.config
    assert config.retries == {"total_max_attempts": 1, "mode": "standard"}
    assert (config.connect_timeout, config.read_timeout) == (5, 5)
    assert source.pricing_client().meta.config.retries["total_max_attempts"] == 1


def test_a_failing_request_is_sent_once_because_the_poller_does_the_retrying(
    make_source: Callable[..., AwsSource],
) -> None:
    error = (
        b"<Response><Errors><Error><Code>InternalError</Code><Message>boom</Message>"
        b"</Error></Errors><RequestID>1</RequestID></Response>"
    )
    with StaticHttpServer({"/": Reply(500, error, {"Content-Type": "text/xml"})}) as ec2:
        source = make_source(endpoint_url=ec2.url)
        with pytest.raises(Unavailable):
            source.fetch_spot_prices(since=None, now=NOW)
        assert ec2.requests == ["POST /"]


# -- instance types (moto, real data) ---------------------------------------------


def test_instance_types_are_discovered_with_their_accelerators(
    make_source: Callable[..., AwsSource],
) -> None:
    # moto answers the whole catalog (about 1,400 types) in one slow page.
    source = make_source(instance_types=None, timeout=60)
    found = {t.name: t for t in source.fetch_instance_types()}
    g5, p4d, p5 = found["g5.xlarge"], found["p4d.24xlarge"], found["p5.48xlarge"]
    assert (g5.accelerator, g5.accelerator_count, g5.vcpus, g5.memory_gib) == ("A10G", 1, 4, 16)
    assert g5.accelerator_memory_gib == pytest.approx(22888 / 1024)
    assert (p4d.accelerator, p4d.accelerator_count, p4d.accelerator_memory_gib) == ("A100", 8, 40)
    assert (p5.accelerator, p5.accelerator_count, p5.accelerator_memory_gib) == ("H100", 8, 80)
    assert found["p4de.24xlarge"].accelerator == "A100-80GB"
    assert found["inf2.xlarge"].accelerator == "INFERENTIA2"
    assert found["trn1.2xlarge"].accelerator == "TRAINIUM"
    assert "m5.xlarge" not in found
    assert all(t.accelerator_count > 0 for t in found.values())


def test_listed_instance_types_are_described_without_a_full_discovery(
    make_source: Callable[..., AwsSource],
) -> None:
    found = make_source(instance_types=TYPES).fetch_instance_types()
    assert [t.name for t in found] == sorted(TYPES)


def test_an_unknown_accelerator_is_skipped_with_a_warning(
    make_source: Callable[..., AwsSource],
) -> None:
    source = make_source(instance_types=None)
    gpu = {
        "Name": "Quantum Widget 9",
        "Manufacturer": "Acme",
        "Count": 2,
        "MemoryInfo": {"SizeInMiB": 8192},
    }
    described = {
        "InstanceTypes": [
            {
                "InstanceType": "x9.2xlarge",
                "VCpuInfo": {"DefaultVCpus": 8},
                "MemoryInfo": {"SizeInMiB": 32768},
                "GpuInfo": {"Gpus": [gpu]},
            },
            {
                "InstanceType": "g5.xlarge",
                "VCpuInfo": {"DefaultVCpus": 4},
                "MemoryInfo": {"SizeInMiB": 16384},
                "GpuInfo": {"Gpus": [{**gpu, "Name": "A10G", "Count": 1}]},
            },
        ]
    }
    with Stubber(source.ec2_client("us-east-1")) as ec2, capture_logs() as logs:
        ec2.add_response("describe_instance_types", described, {"MaxResults": 100})
        found = source.fetch_instance_types()
    assert [t.name for t in found] == ["g5.xlarge"]
    warning = next(e for e in logs if e["event"].startswith("unknown accelerator"))
    assert warning["log_level"] == "warning"
    assert warning["accelerator"] == "Quantum Widget 9"
    assert warning["instance_types"] == ["x9.2xlarge"]


def test_a_listed_type_without_an_accelerator_is_left_out_with_a_warning(
    make_source: Callable[..., AwsSource],
) -> None:
    source = make_source(instance_types=["m5.xlarge", "g5.xlarge"])
    with capture_logs() as logs:
        found = source.fetch_instance_types()
    assert [t.name for t in found] == ["g5.xlarge"]
    assert any(e.get("instance_type") == "m5.xlarge" for e in logs)


def test_a_fractional_gpu_counts_as_that_fraction_of_one_whole_gpu(
    make_source: Callable[..., AwsSource],
) -> None:
    (g6f,) = make_source(instance_types=["g6f.large"]).fetch_instance_types()
    assert (g6f.accelerator, g6f.accelerator_count) == ("L4", 0.125)
    assert g6f.accelerator_memory_gib == pytest.approx(2861 / 0.125 / 1024)


def test_discovered_gpu_types_are_the_ones_prices_are_asked_for(
    make_source: Callable[..., AwsSource],
) -> None:
    source = make_source(instance_types=None)
    described = {
        "InstanceTypes": [
            {
                "InstanceType": "g5.xlarge",
                "VCpuInfo": {"DefaultVCpus": 4},
                "MemoryInfo": {"SizeInMiB": 16384},
                "GpuInfo": {
                    "Gpus": [
                        {
                            "Name": "A10G",
                            "Manufacturer": "NVIDIA",
                            "Count": 1,
                            "MemoryInfo": {"SizeInMiB": 22888},
                        }
                    ]
                },
            },
            {
                "InstanceType": "m5.xlarge",
                "VCpuInfo": {"DefaultVCpus": 4},
                "MemoryInfo": {"SizeInMiB": 16384},
            },
        ]
    }
    with Stubber(source.ec2_client("us-east-1")) as ec2:
        ec2.add_response("describe_instance_types", described, {"MaxResults": 100})
        ec2.add_response(
            "describe_spot_price_history", {"SpotPriceHistory": []}, spot_request(["g5.xlarge"])
        )
        assert source.fetch_spot_prices(since=None, now=NOW) == []
        ec2.assert_no_pending_responses()


# -- spot prices --------------------------------------------------------------------


def test_spot_prices_come_through_the_real_client_from_moto(
    make_source: Callable[..., AwsSource],
) -> None:
    quotes = make_source(instance_types=["g5.xlarge"]).fetch_spot_prices(since=None, now=NOW)
    assert quotes
    assert {q.offer.instance_type for q in quotes} == {"g5.xlarge"}
    assert {q.offer.market for q in quotes} == {Market.SPOT}
    assert all(q.offer.zone and q.offer.zone.startswith("us-east-1") for q in quotes)
    # moto's hard-coded price and time
    assert {(q.usd_per_hour, q.observed_at) for q in quotes} == {
        (0.00001, datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC))
    }


def test_an_unchanged_spot_price_is_confirmed_at_the_time_of_the_poll(
    make_source: Callable[..., AwsSource],
) -> None:
    source = make_source(instance_types=["g5.xlarge"])
    quotes = source.fetch_spot_prices(since=None, now=NOW)
    confirmed = aws_module._still_current(quotes, NOW)
    by_offer: dict[str, list[datetime]] = {}
    for q in [*quotes, *confirmed]:
        by_offer.setdefault(q.offer.key, []).append(q.observed_at)
    # every offer: the time AWS changed the price, and now (so it is not taken as stale)
    assert all(max(times) == NOW and min(times) < NOW for times in by_offer.values())


def test_a_spot_row_becomes_a_quote_on_its_availability_zone_id(
    source: AwsSource, ec2: Stubber
) -> None:
    row = spot_row("p5.48xlarge", "use1-az4", "41.2950")
    ec2.add_response("describe_spot_price_history", {"SpotPriceHistory": [row]}, spot_request())
    assert source.fetch_spot_prices(since=None, now=NOW) == [
        spot_quote("use1-az4", "p5.48xlarge", 41.295, NOW - timedelta(hours=3))
    ]


def test_the_zone_is_the_zone_name_when_aws_gives_no_zone_id(
    source: AwsSource, ec2: Stubber
) -> None:
    rows = spot_history_rows()  # botocore's example: no AvailabilityZoneId
    ec2.add_response("describe_spot_price_history", {"SpotPriceHistory": rows}, spot_request())
    quotes = source.fetch_spot_prices(since=None, now=NOW)
    assert [(q.offer.zone, q.usd_per_hour) for q in quotes] == [
        ("us-west-1a", 0.08),
        ("us-west-1c", 0.08),
    ]
    assert quotes[0].observed_at == datetime(2014, 1, 6, 4, 32, 53, tzinfo=UTC)


def test_spot_history_is_followed_across_pages(source: AwsSource, ec2: Stubber) -> None:
    first = {
        "SpotPriceHistory": [spot_row("g5.xlarge", "use1-az1", "0.4011")],
        "NextToken": "page-2",
    }
    second = {"SpotPriceHistory": [spot_row("g5.xlarge", "use1-az2", "0.3870")], "NextToken": ""}
    ec2.add_response("describe_spot_price_history", first, spot_request())
    ec2.add_response("describe_spot_price_history", second, spot_request(NextToken="page-2"))
    quotes = source.fetch_spot_prices(since=None, now=NOW)
    assert [(q.offer.zone, q.usd_per_hour) for q in quotes] == [
        ("use1-az1", 0.4011),
        ("use1-az2", 0.387),
    ]


def test_since_is_passed_to_aws_as_the_start_time(source: AwsSource, ec2: Stubber) -> None:
    since = NOW - timedelta(minutes=5)
    ec2.add_response(
        "describe_spot_price_history", {"SpotPriceHistory": []}, spot_request(start=since)
    )
    source.fetch_spot_prices(since=since, now=NOW)


def test_many_instance_types_are_asked_for_in_batches(
    make_source: Callable[..., AwsSource],
) -> None:
    types = [f"g5.{n}xlarge" for n in range(1, 121)]
    source = make_source(instance_types=types)
    with Stubber(source.ec2_client("us-east-1")) as ec2:
        for batch in (types[:50], types[50:100], types[100:]):
            ec2.add_response(
                "describe_spot_price_history", {"SpotPriceHistory": []}, spot_request(batch)
            )
        source.fetch_spot_prices(since=None, now=NOW)
        ec2.assert_no_pending_responses()


def test_an_empty_history_gives_no_quotes(source: AwsSource, ec2: Stubber) -> None:
    ec2.add_response("describe_spot_price_history", {"SpotPriceHistory": []}, spot_request())
    assert source.fetch_spot_prices(since=None, now=NOW) == []


def test_a_row_without_a_spot_price_fails_the_whole_fetch_naming_the_field(
    source: AwsSource, ec2: Stubber
) -> None:
    good = spot_row("g5.xlarge", "use1-az1", "0.4011")
    bad = spot_row("g5.xlarge", "use1-az2", "0.3870")
    del bad["SpotPrice"]
    ec2.add_response(
        "describe_spot_price_history", {"SpotPriceHistory": [good, bad]}, spot_request()
    )
    with pytest.raises(BadPayload) as caught:
        source.fetch_spot_prices(since=None, now=NOW)
    assert caught.value.field == "SpotPriceHistory[1].SpotPrice"
    assert caught.value.source == NAME


def test_a_spot_price_that_is_not_a_number_is_a_bad_payload(
    source: AwsSource, ec2: Stubber
) -> None:
    row = spot_row("g5.xlarge", "use1-az1", "n/a")
    ec2.add_response("describe_spot_price_history", {"SpotPriceHistory": [row]}, spot_request())
    with pytest.raises(BadPayload) as caught:
        source.fetch_spot_prices(since=None, now=NOW)
    assert caught.value.field == "SpotPriceHistory[0].SpotPrice"
    assert "'n/a'" in str(caught.value)


def test_a_timestamp_without_a_time_zone_is_a_bad_payload(source: AwsSource, ec2: Stubber) -> None:
    row = spot_row("g5.xlarge", "use1-az1", "0.4", Timestamp=datetime(2026, 11, 22, 9, 0))
    ec2.add_response("describe_spot_price_history", {"SpotPriceHistory": [row]}, spot_request())
    with pytest.raises(BadPayload) as caught:
        source.fetch_spot_prices(since=None, now=NOW)
    assert caught.value.field == "SpotPriceHistory[0].Timestamp"


def test_request_limit_exceeded_is_throttled_with_aws_retry_after(
    source: AwsSource, ec2: Stubber
) -> None:
    ec2.add_client_error(
        "describe_spot_price_history",
        service_error_code="RequestLimitExceeded",
        service_message="Request limit exceeded.",
        http_status_code=503,
        response_meta={"HTTPHeaders": {"retry-after": "7"}},
    )
    with pytest.raises(Throttled) as caught:
        source.fetch_spot_prices(since=None, now=NOW)
    assert caught.value.retry_after == 7
    assert "ec2:DescribeSpotPriceHistory (us-east-1)" in str(caught.value)


def test_a_503_is_unavailable(source: AwsSource, ec2: Stubber) -> None:
    ec2.add_client_error(
        "describe_spot_price_history", service_error_code="Unavailable", http_status_code=503
    )
    with pytest.raises(Unavailable):
        source.fetch_spot_prices(since=None, now=NOW)


def test_a_refused_permission_is_auth_failed_naming_the_iam_action(
    source: AwsSource, ec2: Stubber
) -> None:
    ec2.add_client_error(
        "describe_spot_price_history",
        service_error_code="UnauthorizedOperation",
        service_message="You are not authorized to perform this operation.",
        http_status_code=403,
    )
    with pytest.raises(AuthFailed) as caught:
        source.fetch_spot_prices(since=None, now=NOW)
    assert "ec2:DescribeSpotPriceHistory" in str(caught.value)


def test_any_other_rejected_request_is_a_bad_payload_not_a_temporary_error(
    source: AwsSource, ec2: Stubber
) -> None:
    ec2.add_client_error(
        "describe_spot_price_history",
        service_error_code="InvalidParameterValue",
        http_status_code=400,
    )
    with pytest.raises(BadPayload):
        source.fetch_spot_prices(since=None, now=NOW)


def test_an_endpoint_that_refuses_connections_is_unavailable(
    make_source: Callable[..., AwsSource],
) -> None:
    source = make_source(endpoint_url=refused_url())
    with pytest.raises(Unavailable) as caught:
        source.fetch_spot_prices(since=None, now=NOW)
    assert isinstance(caught.value.__cause__, Exception)


def test_an_html_error_page_from_the_endpoint_is_unavailable(source: AwsSource) -> None:
    # moto lacks GetSpotPlacementScores and answers with an HTML 500 page, as a proxy
    # in front of a failing endpoint would.
    with pytest.raises(Unavailable):
        source.fetch_placement_scores(now=NOW)


def test_missing_credentials_are_auth_failed_saying_how_to_provide_them(
    make_source: Callable[..., AwsSource], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_no_credentials(monkeypatch, tmp_path)
    source = make_source()
    with pytest.raises(AuthFailed) as caught:
        source.fetch_instance_types()
    message = str(caught.value)
    assert "no usable AWS credentials" in message
    assert "AWS_ACCESS_KEY_ID" in message and "profile" in message and "IAM role" in message


# -- on-demand prices -------------------------------------------------------------


def test_on_demand_prices_come_from_the_pricing_api_for_plain_linux(
    source: AwsSource, pricing: Stubber
) -> None:
    items = price_list_items(p4d_offer_file())  # an on-demand and a Capacity Block product
    pricing.add_response(
        "get_products", {"FormatVersion": "aws_v1", "PriceList": items}, PRODUCTS_REQUEST
    )
    assert source.fetch_on_demand_prices(now=NOW) == [on_demand_quote("p4d.24xlarge", 32.7726)]


def test_on_demand_prices_are_followed_across_pages(source: AwsSource, pricing: Stubber) -> None:
    p5 = offer_file_for(p4d_offer_file(), instance_type="p5.48xlarge", usd_per_hour="55.04")
    pricing.add_response(
        "get_products",
        {"PriceList": price_list_items(p4d_offer_file()), "NextToken": "page-2"},
        PRODUCTS_REQUEST,
    )
    pricing.add_response(
        "get_products",
        {"PriceList": price_list_items(p5)},
        {**PRODUCTS_REQUEST, "NextToken": "page-2"},
    )
    assert source.fetch_on_demand_prices(now=NOW) == [
        on_demand_quote("p4d.24xlarge", 32.7726),
        on_demand_quote("p5.48xlarge", 55.04),
    ]


def test_products_of_types_not_followed_are_ignored(
    make_source: Callable[..., AwsSource],
) -> None:
    source = make_source(instance_types=["g5.xlarge"])
    with Stubber(source.pricing_client()) as pricing:
        pricing.add_response(
            "get_products", {"PriceList": price_list_items(p4d_offer_file())}, PRODUCTS_REQUEST
        )
        assert source.fetch_on_demand_prices(now=NOW) == []


def test_a_price_with_two_dimensions_is_a_bad_payload_naming_the_field(
    source: AwsSource, pricing: Stubber
) -> None:
    offer_file = p4d_offer_file()
    (term,) = offer_file["terms"]["OnDemand"]["H7NGEAC6UEHNTKSJ"].values()
    (dimension,) = term["priceDimensions"].values()
    term["priceDimensions"]["SECOND"] = copy.deepcopy(dimension)
    pricing.add_response(
        "get_products", {"PriceList": price_list_items(offer_file)}, PRODUCTS_REQUEST
    )
    with pytest.raises(BadPayload) as caught:
        source.fetch_on_demand_prices(now=NOW)
    assert caught.value.field == "PriceList[0].terms.OnDemand"
    assert "exactly one" in str(caught.value)


def test_a_price_that_is_not_per_hour_is_a_bad_payload(source: AwsSource, pricing: Stubber) -> None:
    offer_file = p4d_offer_file()
    (term,) = offer_file["terms"]["OnDemand"]["H7NGEAC6UEHNTKSJ"].values()
    (dimension,) = term["priceDimensions"].values()
    dimension["unit"] = "GB-Mo"
    pricing.add_response(
        "get_products", {"PriceList": price_list_items(offer_file)}, PRODUCTS_REQUEST
    )
    with pytest.raises(BadPayload) as caught:
        source.fetch_on_demand_prices(now=NOW)
    assert caught.value.field is not None and caught.value.field.endswith(".unit")


def test_a_price_list_entry_that_is_not_json_is_a_bad_payload(
    source: AwsSource, pricing: Stubber
) -> None:
    pricing.add_response("get_products", {"PriceList": ["{not json"]}, PRODUCTS_REQUEST)
    with pytest.raises(BadPayload) as caught:
        source.fetch_on_demand_prices(now=NOW)
    assert caught.value.field == "PriceList[0]"


def test_a_denied_pricing_api_falls_back_to_the_public_bulk_price_list(
    make_source: Callable[..., AwsSource],
) -> None:
    routes = {bulk_price_list_path("us-east-1"): Reply.file(OFFER_FILE_P4D)}
    with StaticHttpServer(routes) as bulk:
        source = make_source(pricing_bulk_url=bulk.url)
        with Stubber(source.pricing_client()) as pricing, capture_logs() as logs:
            pricing.add_client_error(
                "get_products", service_error_code="AccessDeniedException", http_status_code=400
            )
            quotes = source.fetch_on_demand_prices(now=NOW)
        assert bulk.requests == [f"GET {bulk_price_list_path('us-east-1')}"]
    assert quotes == [on_demand_quote("p4d.24xlarge", 32.7726)]
    assert any(e["log_level"] == "warning" and "bulk price list" in e["event"] for e in logs)


def test_an_unreachable_pricing_api_falls_back_to_the_public_bulk_price_list(
    make_source: Callable[..., AwsSource],
) -> None:
    routes = {bulk_price_list_path("us-east-1"): Reply.file(OFFER_FILE_P4D)}
    with StaticHttpServer(routes) as bulk:
        source = make_source(pricing_endpoint_url=refused_url(), pricing_bulk_url=bulk.url)
        assert source.fetch_on_demand_prices(now=NOW) == [on_demand_quote("p4d.24xlarge", 32.7726)]


def test_a_throttled_pricing_api_is_throttled_not_replaced_by_the_bulk_file(
    make_source: Callable[..., AwsSource],
) -> None:
    with StaticHttpServer() as bulk:
        source = make_source(pricing_bulk_url=bulk.url)
        with Stubber(source.pricing_client()) as pricing:
            pricing.add_client_error(
                "get_products", service_error_code="ThrottlingException", http_status_code=400
            )
            with pytest.raises(Throttled):
                source.fetch_on_demand_prices(now=NOW)
        assert bulk.requests == []


def test_a_failing_bulk_file_after_a_denied_pricing_api_fails_the_fetch(
    make_source: Callable[..., AwsSource],
) -> None:
    routes = {bulk_price_list_path("us-east-1"): Reply(503, b"slow down")}
    with StaticHttpServer(routes) as bulk:
        source = make_source(pricing_bulk_url=bulk.url)
        with Stubber(source.pricing_client()) as pricing:
            pricing.add_client_error(
                "get_products", service_error_code="AccessDeniedException", http_status_code=400
            )
            with pytest.raises(Unavailable):
                source.fetch_on_demand_prices(now=NOW)


def test_fetch_prices_gives_spot_and_on_demand_quotes_together(
    source: AwsSource, ec2: Stubber, pricing: Stubber
) -> None:
    row = spot_row("p4d.24xlarge", "use1-az6", "11.5721")
    ec2.add_response("describe_spot_price_history", {"SpotPriceHistory": [row]}, spot_request())
    pricing.add_response(
        "get_products", {"PriceList": price_list_items(p4d_offer_file())}, PRODUCTS_REQUEST
    )
    assert source.fetch_prices(since=None, now=NOW) == [
        spot_quote("use1-az6", "p4d.24xlarge", 11.5721, NOW - timedelta(hours=3)),
        spot_quote("use1-az6", "p4d.24xlarge", 11.5721, NOW),  # still the price now
        on_demand_quote("p4d.24xlarge", 32.7726),
    ]


# -- capacity: placement scores -----------------------------------------------------


def test_a_placement_score_is_one_signal_per_zone_for_the_whole_set_of_types(
    source: AwsSource, ec2: Stubber
) -> None:
    scores = [
        {"Region": "us-east-1", "AvailabilityZoneId": "use1-az4", "Score": 9},
        {"Region": "us-east-1", "AvailabilityZoneId": "use1-az6", "Score": 3},
    ]
    ec2.add_response(
        "get_spot_placement_scores", {"SpotPlacementScores": scores}, placement_request()
    )
    signals = source.fetch_placement_scores(now=NOW)
    assert [(s.zone, s.value, s.instance_type) for s in signals] == [
        ("use1-az4", 9, None),
        ("use1-az6", 3, None),
    ]
    assert {(s.kind, s.region, s.observed_at, s.source) for s in signals} == {
        (CapacityKind.PLACEMENT_SCORE, "us-east-1", NOW, NAME)
    }


def test_placement_scores_are_asked_for_one_region_at_a_time(
    make_source: Callable[..., AwsSource],
) -> None:
    source = make_source(regions=["us-east-1", "eu-west-1"])
    with (
        Stubber(source.ec2_client("us-east-1")) as east,
        Stubber(source.ec2_client("eu-west-1")) as west,
    ):
        east.add_response(
            "get_spot_placement_scores", {"SpotPlacementScores": []}, placement_request("us-east-1")
        )
        west.add_response(
            "get_spot_placement_scores",
            {
                "SpotPlacementScores": [
                    {"Region": "eu-west-1", "AvailabilityZoneId": "euw1-az1", "Score": 7}
                ]
            },
            placement_request("eu-west-1"),
        )
        assert [s.zone for s in source.fetch_placement_scores(now=NOW)] == ["euw1-az1"]
        east.assert_no_pending_responses()
        west.assert_no_pending_responses()


def test_placement_scores_are_followed_across_pages(source: AwsSource, ec2: Stubber) -> None:
    row = {"Region": "us-east-1", "AvailabilityZoneId": "use1-az1", "Score": 5}
    ec2.add_response(
        "get_spot_placement_scores",
        {"SpotPlacementScores": [row], "NextToken": "page-2"},
        placement_request(),
    )
    ec2.add_response(
        "get_spot_placement_scores",
        {"SpotPlacementScores": [{**row, "AvailabilityZoneId": "use1-az2"}]},
        placement_request(NextToken="page-2"),
    )
    assert [s.zone for s in source.fetch_placement_scores(now=NOW)] == ["use1-az1", "use1-az2"]


def test_a_placement_score_out_of_range_is_a_bad_payload(source: AwsSource, ec2: Stubber) -> None:
    row = {"Region": "us-east-1", "AvailabilityZoneId": "use1-az1", "Score": 11}
    ec2.add_response(
        "get_spot_placement_scores", {"SpotPlacementScores": [row]}, placement_request()
    )
    with pytest.raises(BadPayload) as caught:
        source.fetch_placement_scores(now=NOW)
    assert caught.value.field == "SpotPlacementScores[0]"


def test_placement_scores_can_be_turned_off(make_source: Callable[..., AwsSource]) -> None:
    source = make_source(placement_scores=False)
    with Stubber(source.ec2_client("us-east-1")):  # any call would fail: nothing is stubbed
        assert source.fetch_placement_scores(now=NOW) == []


# -- capacity: Spot Advisor ----------------------------------------------------------


def advisor_signal(region: str, instance_type: str, bucket: int) -> CapacitySignal:
    return CapacitySignal(
        provider="aws",
        region=region,
        instance_type=instance_type,
        kind=CapacityKind.INTERRUPTION_BUCKET,
        value=bucket,
        observed_at=NOW,
        source=NAME,
    )


def test_interruption_buckets_come_from_the_spot_advisor_per_region_and_type(
    make_source: Callable[..., AwsSource],
) -> None:
    with StaticHttpServer({"/spot-advisor-data.json": Reply.file(SPOT_ADVISOR_FILE)}) as server:
        source = make_source(
            regions=["us-east-1", "eu-west-1"],
            spot_advisor_url=f"{server.url}/spot-advisor-data.json",
        )
        signals = source.fetch_interruption_buckets(now=NOW)
    assert signals == [
        advisor_signal("us-east-1", "g5.xlarge", 4),
        advisor_signal("us-east-1", "p4d.24xlarge", 2),
        advisor_signal("us-east-1", "p5.48xlarge", 4),
        advisor_signal("eu-west-1", "g5.xlarge", 2),
        advisor_signal("eu-west-1", "p4d.24xlarge", 4),
        # no p5.48xlarge in eu-west-1 in the advisor's data: no signal, not an invented one
    ]


def test_a_region_missing_from_the_spot_advisor_gives_no_signals(
    make_source: Callable[..., AwsSource], respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(ADVISOR_URL).respond(json=load_json(SPOT_ADVISOR_FILE))
    source = make_source(regions=["ap-south-2"])
    assert source.fetch_interruption_buckets(now=NOW) == []


def test_a_spot_advisor_file_without_spot_advisor_is_a_bad_payload(
    source: AwsSource, respx_mock: respx.MockRouter
) -> None:
    data = load_json(SPOT_ADVISOR_FILE)
    del data["spot_advisor"]
    respx_mock.get(ADVISOR_URL).respond(json=data)
    with pytest.raises(BadPayload) as caught:
        source.fetch_interruption_buckets(now=NOW)
    assert caught.value.field == "spot_advisor"


def test_spot_advisor_ranges_of_the_wrong_shape_are_a_bad_payload(
    source: AwsSource, respx_mock: respx.MockRouter
) -> None:
    data = load_json(SPOT_ADVISOR_FILE)
    data["ranges"][2] = {"label": "10-15%", "max": 16}
    respx_mock.get(ADVISOR_URL).respond(json=data)
    with pytest.raises(BadPayload) as caught:
        source.fetch_interruption_buckets(now=NOW)
    assert caught.value.field == "ranges[2].index"


def test_an_interruption_bucket_that_is_not_in_the_ranges_is_a_bad_payload(
    source: AwsSource, respx_mock: respx.MockRouter
) -> None:
    data = load_json(SPOT_ADVISOR_FILE)
    data["spot_advisor"]["us-east-1"]["Linux"]["p5.48xlarge"]["r"] = 7
    respx_mock.get(ADVISOR_URL).respond(json=data)
    with pytest.raises(BadPayload) as caught:
        source.fetch_interruption_buckets(now=NOW)
    assert caught.value.field == "spot_advisor.us-east-1.Linux.p5.48xlarge.r"


def test_a_spot_advisor_body_that_is_not_json_is_a_bad_payload(
    source: AwsSource, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(ADVISOR_URL).respond(200, text="<html>maintenance</html>")
    with pytest.raises(BadPayload):
        source.fetch_interruption_buckets(now=NOW)


def test_a_throttled_spot_advisor_is_throttled_with_its_retry_after(
    source: AwsSource, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(ADVISOR_URL).respond(429, headers={"Retry-After": "7"})
    with pytest.raises(Throttled) as caught:
        source.fetch_interruption_buckets(now=NOW)
    assert caught.value.retry_after == 7


def test_a_spot_advisor_timeout_is_unavailable(
    source: AwsSource, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(ADVISOR_URL).mock(side_effect=httpx.ReadTimeout("read timed out"))
    with pytest.raises(Unavailable):
        source.fetch_interruption_buckets(now=NOW)


def test_fetch_capacity_gives_placement_scores_and_interruption_buckets(
    source: AwsSource, ec2: Stubber, respx_mock: respx.MockRouter
) -> None:
    ec2.add_response(
        "get_spot_placement_scores",
        {
            "SpotPlacementScores": [
                {"Region": "us-east-1", "AvailabilityZoneId": "use1-az4", "Score": 8}
            ]
        },
        placement_request(),
    )
    respx_mock.get(ADVISOR_URL).respond(json=load_json(SPOT_ADVISOR_FILE))
    kinds = [s.kind for s in source.fetch_capacity(now=NOW)]
    assert kinds == [CapacityKind.PLACEMENT_SCORE] + [CapacityKind.INTERRUPTION_BUCKET] * 3
