"""The Electricity Maps adapter against respx routes on 127.0.0.1, serving recorded bodies
(``tests/data/carbon/electricitymaps``). Nothing reaches a real host."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from arbiter.domain.market import CarbonBasis, CarbonUnit
from arbiter.errors import AuthFailed, BadPayload, ConfigError, Throttled, Unavailable
from providers.electricitymaps import ElectricityMapsSource, build

BASE = "http://127.0.0.1:9901/v3"
TOKEN = "em-token-8f1c2d-never-shown"
NOW = datetime(2024, 9, 24, 3, 30, tzinfo=UTC)
DATA = Path(__file__).resolve().parents[1] / "data" / "carbon" / "electricitymaps"
LATEST = "/carbon-intensity/latest"
FORECAST = "/carbon-intensity/forecast"


def recorded(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


MISO_LIFECYCLE = recorded("v3_carbon-intensity_latest.US-MIDW-MISO.lifecycle.json")
MISO_DIRECT = recorded("v3_carbon-intensity_latest.US-MIDW-MISO.direct.json")
DE_LATEST = recorded("v3_carbon-intensity_latest.DE.json")
DE_FORECAST = recorded("v3_carbon-intensity_forecast.DE.json")
NO_RECENT_DATA = recorded("v3_carbon-intensity_latest.error_no_recent_data.json")


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def make_source() -> Iterator[Callable[..., ElectricityMapsSource]]:
    built: list[ElectricityMapsSource] = []

    def make(**options: Any) -> ElectricityMapsSource:
        source = build("em", {"token": TOKEN, "base_url": BASE, **options}, timeout=2.0)
        built.append(source)
        return source

    yield make
    for source in built:
        source.close()


def latest(api: respx.MockRouter, zone: str, **response: Any) -> respx.Route:
    return api.get(LATEST, params={"zone": zone}).mock(return_value=httpx.Response(**response))


# -- happy paths -----------------------------------------------------------------------


def test_the_recorded_latest_reading_becomes_a_lifecycle_reading_for_its_hour(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    latest(api, "US-MIDW-MISO", status_code=200, json=MISO_LIFECYCLE)

    [reading] = make_source().fetch_carbon(["US-MIDW-MISO"], now=NOW)

    assert reading.zone == "US-MIDW-MISO"
    assert reading.value == 466
    assert reading.unit is CarbonUnit.G_PER_KWH
    assert reading.basis is CarbonBasis.LIFECYCLE
    assert reading.valid_at == datetime(2024, 9, 24, 3, 0, tzinfo=UTC)
    assert reading.source == "em"
    assert reading.forecast is False


def test_the_request_carries_the_token_header_the_factor_type_and_no_caller_lookup(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    route = latest(api, "US-MIDW-MISO", status_code=200, json=MISO_DIRECT)

    make_source(emission_factor_type="direct").fetch_carbon(["US-MIDW-MISO"], now=NOW)

    request = route.calls.last.request
    assert request.url.path == "/v3/carbon-intensity/latest"
    assert request.headers["auth-token"] == TOKEN
    assert dict(request.url.params) == {
        "zone": "US-MIDW-MISO",
        "emissionFactorType": "direct",
        "disableCallerLookup": "true",
    }


def test_direct_factors_are_labelled_direct_as_the_response_says(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    latest(api, "US-MIDW-MISO", status_code=200, json=MISO_DIRECT)

    [reading] = make_source(emission_factor_type="direct").fetch_carbon(["US-MIDW-MISO"], now=NOW)

    assert (reading.value, reading.basis) == (506, CarbonBasis.DIRECT)


def test_the_basis_is_the_one_the_response_states_not_the_one_asked_for(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    latest(api, "US-MIDW-MISO", status_code=200, json=MISO_DIRECT)

    [reading] = make_source(emission_factor_type="lifecycle").fetch_carbon(
        ["US-MIDW-MISO"], now=NOW
    )

    assert reading.basis is CarbonBasis.DIRECT


def test_each_zone_is_asked_once_in_the_order_given(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    de = latest(api, "DE", status_code=200, json=DE_LATEST)
    miso = latest(api, "US-MIDW-MISO", status_code=200, json=MISO_LIFECYCLE)

    readings = make_source().fetch_carbon(["DE", "US-MIDW-MISO", "DE"], now=NOW)

    assert [r.zone for r in readings] == ["DE", "US-MIDW-MISO"]
    assert (de.call_count, miso.call_count) == (1, 1)
    assert readings[0].value == 428
    assert readings[0].valid_at == datetime(2024, 3, 1, 23, 0, tzinfo=UTC)


def test_no_zones_means_no_call(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    assert make_source().fetch_carbon([], now=NOW) == []
    assert not api.calls


# -- forecast --------------------------------------------------------------------------


def test_the_forecast_is_not_asked_for_unless_enabled(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    latest(api, "DE", status_code=200, json=DE_LATEST)
    forecast = api.get(FORECAST).mock(return_value=httpx.Response(200, json=DE_FORECAST))

    readings = make_source().fetch_carbon(["DE"], now=NOW)

    assert forecast.call_count == 0
    assert [r.forecast for r in readings] == [False]


def test_recorded_forecast_points_become_hourly_forecast_readings(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    latest(api, "DE", status_code=200, json=DE_LATEST)
    route = api.get(FORECAST, params={"zone": "DE"}).mock(
        return_value=httpx.Response(200, json=DE_FORECAST)
    )

    readings = make_source(forecast=True).fetch_carbon(["DE"], now=NOW)

    current, *forecast = readings
    assert current.forecast is False
    assert len(forecast) == 48
    assert all(r.forecast and r.zone == "DE" for r in forecast)
    assert all(r.basis is CarbonBasis.LIFECYCLE for r in forecast)
    assert (forecast[0].valid_at, forecast[0].value) == (
        datetime(2023, 5, 2, 20, 0, tzinfo=UTC),
        557,
    )
    assert forecast[-1].valid_at == datetime(2023, 5, 4, 19, 0, tzinfo=UTC)
    assert route.calls.last.request.headers["auth-token"] == TOKEN


def test_forecast_readings_carry_the_requested_basis_since_the_body_states_none(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    latest(api, "DE", status_code=200, json={**DE_LATEST, "emissionFactorType": "direct"})
    route = api.get(FORECAST).mock(return_value=httpx.Response(200, json=DE_FORECAST))

    readings = make_source(forecast=True, emission_factor_type="direct").fetch_carbon(
        ["DE"], now=NOW
    )

    assert {r.basis for r in readings} == {CarbonBasis.DIRECT}
    assert route.calls.last.request.url.params["emissionFactorType"] == "direct"


def test_a_forecast_outside_the_plan_is_auth_failed(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    latest(api, "DE", status_code=200, json=DE_LATEST)
    api.get(FORECAST).mock(return_value=httpx.Response(403, json={"message": "Forbidden"}))

    with pytest.raises(AuthFailed, match="HTTP 403"):
        make_source(forecast=True).fetch_carbon(["DE"], now=NOW)


# -- zones the API does not know ---------------------------------------------------------


@pytest.mark.parametrize("status", [404, 400, 200])
def test_a_zone_without_data_is_skipped_with_a_warning_and_the_others_are_returned(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource], status: int
) -> None:
    latest(api, "XX-UNKNOWN", status_code=status, json=NO_RECENT_DATA)
    latest(api, "US-MIDW-MISO", status_code=200, json=MISO_LIFECYCLE)

    with capture_logs() as logs:
        readings = make_source().fetch_carbon(["XX-UNKNOWN", "US-MIDW-MISO"], now=NOW)

    assert [r.zone for r in readings] == ["US-MIDW-MISO"]
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["component"] == "provider.electricitymaps"
    assert warning["zone"] == "XX-UNKNOWN"
    assert warning["detail"] == 'No recent data for zone "US-MIDW-MISO"'
    assert TOKEN not in repr(logs)


def test_a_404_without_a_json_body_also_skips_the_zone(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    latest(api, "XX", status_code=404, text="Not Found")

    with capture_logs():
        assert make_source().fetch_carbon(["XX"], now=NOW) == []


# -- temporary failures ------------------------------------------------------------------


def test_a_throttled_fetch_carries_retry_after_and_the_next_call_succeeds(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    api.get(LATEST).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "17"}, json={"error": "Too many"}),
            httpx.Response(200, json=MISO_LIFECYCLE),
        ]
    )
    source = make_source()

    with pytest.raises(Throttled) as caught:
        source.fetch_carbon(["US-MIDW-MISO"], now=NOW)
    assert caught.value.retry_after == 17
    assert caught.value.source == "em"

    assert [r.value for r in source.fetch_carbon(["US-MIDW-MISO"], now=NOW)] == [466]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_server_error_is_unavailable(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource], status: int
) -> None:
    api.get(LATEST).mock(return_value=httpx.Response(status, text="upstream down"))

    with pytest.raises(Unavailable, match=f"HTTP {status}"):
        make_source().fetch_carbon(["DE"], now=NOW)


@pytest.mark.parametrize("error", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ConnectError])
def test_timeouts_and_connection_failures_are_unavailable(
    api: respx.MockRouter,
    make_source: Callable[..., ElectricityMapsSource],
    error: type[Exception],
) -> None:
    api.get(LATEST).mock(side_effect=error)

    with pytest.raises(Unavailable):
        make_source().fetch_carbon(["DE"], now=NOW)


# -- credentials ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_auth_failed_and_the_message_never_shows_it(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource], status: int
) -> None:
    api.get(LATEST).mock(
        return_value=httpx.Response(status, json={"message": "Invalid authentication"})
    )

    with pytest.raises(AuthFailed) as caught:
        make_source().fetch_carbon(["DE"], now=NOW)

    assert "credentials refused" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_a_missing_token_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        build("em", {"base_url": BASE}, timeout=2.0)

    assert (caught.value.source, caught.value.key) == ("sources.em.options", "token")


def test_a_blank_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="must not be empty") as caught:
        build("em", {"token": "  "}, timeout=2.0)
    assert caught.value.key == "token"


def test_the_token_is_masked_in_the_options_repr(
    make_source: Callable[..., ElectricityMapsSource],
) -> None:
    assert TOKEN not in repr(make_source().options)


# -- malformed bodies ------------------------------------------------------------------


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "carbonIntensity"),
        (_without(MISO_LIFECYCLE, "carbonIntensity"), "carbonIntensity"),
        ({**MISO_LIFECYCLE, "carbonIntensity": None}, "carbonIntensity"),
        ({**MISO_LIFECYCLE, "carbonIntensity": "466"}, "carbonIntensity"),
        ({**MISO_LIFECYCLE, "carbonIntensity": True}, "carbonIntensity"),
        ({**MISO_LIFECYCLE, "carbonIntensity": -1}, "carbonIntensity"),
        (_without(MISO_LIFECYCLE, "datetime"), "datetime"),
        ({**MISO_LIFECYCLE, "datetime": "yesterday"}, "datetime"),
        ({**MISO_LIFECYCLE, "datetime": "2024-09-24T03:00:00"}, "datetime"),
        (_without(MISO_LIFECYCLE, "emissionFactorType"), "emissionFactorType"),
        ({**MISO_LIFECYCLE, "emissionFactorType": "marginal"}, "emissionFactorType"),
        ({**MISO_LIFECYCLE, "zone": "US-CAL-CISO"}, "zone"),
        ([MISO_LIFECYCLE], "(body)"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_malformed_latest_body_is_bad_payload_naming_the_field(
    api: respx.MockRouter,
    make_source: Callable[..., ElectricityMapsSource],
    body: Any,
    field: str,
) -> None:
    latest(api, "US-MIDW-MISO", status_code=200, json=body)

    with pytest.raises(BadPayload) as caught:
        make_source().fetch_carbon(["US-MIDW-MISO"], now=NOW)

    assert caught.value.field == field
    assert "zone=US-MIDW-MISO" in str(caught.value)


def test_a_malformed_forecast_point_is_bad_payload_naming_its_index(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    points = [dict(p) for p in DE_FORECAST["forecast"]]
    points[3]["datetime"] = "soon"
    latest(api, "DE", status_code=200, json=DE_LATEST)
    api.get(FORECAST).mock(
        return_value=httpx.Response(200, json={"zone": "DE", "forecast": points})
    )

    with pytest.raises(BadPayload) as caught:
        make_source(forecast=True).fetch_carbon(["DE"], now=NOW)

    assert caught.value.field == "forecast[3].datetime"


def test_a_forecast_body_without_its_list_is_bad_payload(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    latest(api, "DE", status_code=200, json=DE_LATEST)
    api.get(FORECAST).mock(return_value=httpx.Response(200, json={"zone": "DE"}))

    with pytest.raises(BadPayload) as caught:
        make_source(forecast=True).fetch_carbon(["DE"], now=NOW)

    assert caught.value.field == "forecast"


def test_a_body_that_is_not_json_is_bad_payload(
    api: respx.MockRouter, make_source: Callable[..., ElectricityMapsSource]
) -> None:
    latest(api, "DE", status_code=200, text="<html>maintenance</html>")

    with pytest.raises(BadPayload, match="not JSON"):
        make_source().fetch_carbon(["DE"], now=NOW)


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"token": TOKEN, "zones": ["DE"]}, "zones"),
        ({"token": TOKEN, "emission_factor_type": "marginal"}, "emission_factor_type"),
        ({"token": TOKEN, "base_url": "http://api.electricitymap.org/v3"}, "base_url"),
        ({"token": TOKEN, "base_url": "not a url"}, "base_url"),
        ({"token": TOKEN, "forecast": "sometimes"}, "forecast"),
        ({"token": 12345}, "token"),
    ],
)
def test_bad_options_are_a_config_error_naming_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build("em", options, timeout=2.0)

    assert (caught.value.source, caught.value.key) == ("sources.em.options", key)
    assert TOKEN not in str(caught.value)
    assert "12345" not in str(caught.value)


def test_an_unknown_option_error_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown option; known: token, base_url"):
        build("em", {"token": TOKEN, "tokn": "x"}, timeout=2.0)


def test_defaults_are_the_public_api_lifecycle_factors_and_no_forecast() -> None:
    source = build("em", {"token": TOKEN}, timeout=2.0)
    try:
        assert source.options.base_url == "https://api.electricitymap.org/v3"
        assert source.options.emission_factor_type == "lifecycle"
        assert source.options.forecast is False
    finally:
        source.close()
