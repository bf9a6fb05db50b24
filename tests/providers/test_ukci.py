"""The UK Carbon Intensity adapter against respx routes on 127.0.0.1, serving the
documented body (``tests/data/carbon/ukci``). Nothing reaches a real host."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from arbiter.domain.market import CarbonBasis, CarbonUnit
from arbiter.errors import BadPayload, ConfigError, Throttled, Unavailable
from providers.ukci import UkCarbonIntensitySource, build

BASE = "http://127.0.0.1:9903"
NOW = datetime(2018, 1, 20, 12, 10, tzinfo=UTC)
DATA = Path(__file__).resolve().parents[1] / "data" / "carbon" / "ukci"
DOCS_EXAMPLE = json.loads((DATA / "intensity.docs-example.json").read_text(encoding="utf-8"))
PERIOD = DOCS_EXAMPLE["data"][0]


def with_intensity(**intensity: Any) -> dict[str, Any]:
    """The documented body with ``intensity`` changed (``actual`` is null mid-period)."""
    return {"data": [{**PERIOD, "intensity": {**PERIOD["intensity"], **intensity}}]}


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def source() -> Iterator[UkCarbonIntensitySource]:
    built = build("ukci", {"base_url": BASE}, timeout=2.0)
    yield built
    built.close()


def intensity(api: respx.MockRouter, **response: Any) -> respx.Route:
    return api.get("/intensity").mock(return_value=httpx.Response(**response))


def test_the_actual_intensity_is_used_once_the_half_hour_has_closed(
    api: respx.MockRouter, source: UkCarbonIntensitySource
) -> None:
    route = intensity(api, status_code=200, json=DOCS_EXAMPLE)

    [reading] = source.fetch_carbon(["GB"], now=NOW)

    assert reading.value == 263
    assert reading.forecast is False
    assert reading.valid_at == datetime(2018, 1, 20, 12, 0, tzinfo=UTC)
    assert (reading.zone, reading.unit, reading.basis) == (
        "GB",
        CarbonUnit.G_PER_KWH,
        CarbonBasis.DIRECT,
    )
    assert reading.source == "ukci"
    assert route.calls.last.request.url.path == "/intensity"
    assert "authorization" not in route.calls.last.request.headers


def test_the_forecast_is_used_and_marked_while_actual_is_null(
    api: respx.MockRouter, source: UkCarbonIntensitySource
) -> None:
    intensity(api, status_code=200, json=with_intensity(actual=None))

    [reading] = source.fetch_carbon(["GB"], now=NOW)

    assert (reading.value, reading.forecast) == (266, True)
    assert reading.basis is CarbonBasis.DIRECT


def test_the_forecast_is_used_when_actual_is_absent(
    api: respx.MockRouter, source: UkCarbonIntensitySource
) -> None:
    body = {"data": [{**PERIOD, "intensity": {"forecast": 121, "index": "moderate"}}]}
    intensity(api, status_code=200, json=body)

    [reading] = source.fetch_carbon(["GB"], now=NOW)

    assert (reading.value, reading.forecast) == (121, True)


def test_an_actual_of_zero_is_a_measurement_not_a_missing_value(
    api: respx.MockRouter, source: UkCarbonIntensitySource
) -> None:
    intensity(api, status_code=200, json=with_intensity(actual=0))

    [reading] = source.fetch_carbon(["GB"], now=NOW)

    assert (reading.value, reading.forecast) == (0, False)


def test_zones_other_than_gb_are_not_asked_for(
    api: respx.MockRouter, source: UkCarbonIntensitySource
) -> None:
    assert source.fetch_carbon(["DE", "FR", "IE"], now=NOW) == []
    assert not api.calls


def test_gb_is_asked_once_among_other_zones(
    api: respx.MockRouter, source: UkCarbonIntensitySource
) -> None:
    route = intensity(api, status_code=200, json=DOCS_EXAMPLE)

    readings = source.fetch_carbon(["DE", "GB", "GB"], now=NOW)

    assert [r.zone for r in readings] == ["GB"]
    assert route.call_count == 1


def test_a_throttled_fetch_carries_retry_after_and_the_next_call_succeeds(
    api: respx.MockRouter, source: UkCarbonIntensitySource
) -> None:
    api.get("/intensity").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "5"}),
            httpx.Response(200, json=DOCS_EXAMPLE),
        ]
    )

    with pytest.raises(Throttled) as caught:
        source.fetch_carbon(["GB"], now=NOW)
    assert caught.value.retry_after == 5

    assert [r.value for r in source.fetch_carbon(["GB"], now=NOW)] == [263]


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_server_error_is_unavailable(
    api: respx.MockRouter, source: UkCarbonIntensitySource, status: int
) -> None:
    intensity(api, status_code=status, text="Bad Gateway")

    with pytest.raises(Unavailable, match=f"HTTP {status}"):
        source.fetch_carbon(["GB"], now=NOW)


@pytest.mark.parametrize("error", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ConnectError])
def test_timeouts_and_connection_failures_are_unavailable(
    api: respx.MockRouter, source: UkCarbonIntensitySource, error: type[Exception]
) -> None:
    api.get("/intensity").mock(side_effect=error)

    with pytest.raises(Unavailable):
        source.fetch_carbon(["GB"], now=NOW)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "data"),
        ({"data": []}, "data"),
        ({"data": {"from": "x"}}, "data"),
        ({"data": ["263"]}, "data[0]"),
        ({"data": [{"from": PERIOD["from"]}]}, "data[0].intensity"),
        (with_intensity(actual="263"), "data[0].intensity.actual"),
        (with_intensity(actual=True), "data[0].intensity.actual"),
        (with_intensity(actual=-3), "data[0].intensity.actual"),
        (with_intensity(actual=None, forecast=None), "data[0].intensity.forecast"),
        ({"data": [{"intensity": PERIOD["intensity"]}]}, "data[0].from"),
        ({"data": [{**PERIOD, "from": "2018-01-20T12:00"}]}, "data[0].from"),
        ({"data": [{**PERIOD, "from": "noon"}]}, "data[0].from"),
        ([PERIOD], "(body)"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_malformed_body_is_bad_payload_naming_the_field(
    api: respx.MockRouter, source: UkCarbonIntensitySource, body: Any, field: str
) -> None:
    intensity(api, status_code=200, json=body)

    with pytest.raises(BadPayload) as caught:
        source.fetch_carbon(["GB"], now=NOW)

    assert caught.value.field == field


def test_a_body_that_is_not_json_is_bad_payload(
    api: respx.MockRouter, source: UkCarbonIntensitySource
) -> None:
    intensity(api, status_code=200, text="<html>")

    with pytest.raises(BadPayload, match="not JSON"):
        source.fetch_carbon(["GB"], now=NOW)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"zone": "GB"}, "zone"),
        ({"base_url": "http://api.carbonintensity.org.uk"}, "base_url"),
        ({"base_url": "ftp://127.0.0.1"}, "base_url"),
    ],
)
def test_bad_options_are_a_config_error_naming_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build("ukci", options, timeout=2.0)

    assert (caught.value.source, caught.value.key) == ("sources.ukci.options", key)


def test_no_options_mean_the_public_api() -> None:
    source = build("ukci", {}, timeout=2.0)
    try:
        assert source.options.base_url == "https://api.carbonintensity.org.uk"
    finally:
        source.close()
