"""The WattTime adapter against respx routes on 127.0.0.1, serving recorded bodies
(``tests/data/carbon/watttime``). Nothing reaches a real host."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from arbiter.domain.market import CarbonBasis, CarbonUnit
from arbiter.errors import AuthFailed, BadPayload, ConfigError, Throttled, Unavailable
from providers.watttime import LBS_PER_MWH_TO_G_PER_KWH, WattTimeSource, build

BASE = "http://127.0.0.1:9902"
USER = "arbiter-bot"
PASSWORD = "wt-pass-5e9b1a-never-shown"
TOKEN = "wt-token-0a7c44-never-shown"
FRESH_TOKEN = "wt-token-1b8d55-also-secret"
NOW = datetime(2024, 6, 18, 18, 42, tzinfo=UTC)
DATA = Path(__file__).resolve().parents[1] / "data" / "carbon" / "watttime"
REGIONS = {"US-CAL-CISO": "CAISO_NORTH", "US-NW-PSCO": "PSCO"}


def recorded(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


# /v3/forecast has the same data/meta shape as /v3/historical (see the data README).
MOER = recorded("v3_historical.CAISO_NORTH.json")
INDEX = recorded("v3_signal-index.PSCO.json")
INVALID_SCOPE = recorded("v3_error_invalid_scope.json")


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def login(api: respx.MockRouter) -> respx.Route:
    return api.get("/login").mock(return_value=httpx.Response(200, json={"token": TOKEN}))


@pytest.fixture
def make_source() -> Iterator[Callable[..., WattTimeSource]]:
    built: list[WattTimeSource] = []

    def make(**options: Any) -> WattTimeSource:
        merged = {
            "username": USER,
            "password": PASSWORD,
            "regions": REGIONS,
            "base_url": BASE,
            **options,
        }
        source = build("wt", merged, timeout=2.0)
        built.append(source)
        return source

    yield make
    for source in built:
        source.close()


def moer_route(api: respx.MockRouter, region: str = "CAISO_NORTH", **response: Any) -> respx.Route:
    response = response or {"status_code": 200, "json": MOER}
    return api.get("/v3/forecast", params={"region": region}).mock(
        return_value=httpx.Response(**response)
    )


def index_route(api: respx.MockRouter, region: str = "PSCO", **response: Any) -> respx.Route:
    response = response or {"status_code": 200, "json": INDEX}
    return api.get("/v3/signal-index", params={"region": region}).mock(
        return_value=httpx.Response(**response)
    )


def index_for(region: str) -> dict[str, Any]:
    return {**INDEX, "meta": {**INDEX["meta"], "region": region}}


def moer_for(region: str) -> dict[str, Any]:
    return {**MOER, "meta": {**MOER["meta"], "region": region}}


# -- readings --------------------------------------------------------------------------


def test_the_current_moer_is_converted_from_lbs_per_mwh_to_g_per_kwh(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    moer_route(api)

    [reading] = make_source(signal_index=False).fetch_carbon(["US-CAL-CISO"], now=NOW)

    assert reading.value == pytest.approx(870 * 0.453592)
    assert reading.value == pytest.approx(394.625, abs=1e-3)
    assert reading.unit is CarbonUnit.G_PER_KWH
    assert reading.basis is CarbonBasis.MARGINAL
    assert reading.valid_at == datetime(2022, 7, 15, 0, 0, tzinfo=UTC)
    assert (reading.zone, reading.source, reading.forecast) == ("US-CAL-CISO", "wt", False)


def test_one_lb_per_mwh_is_0_453592_g_per_kwh() -> None:
    assert pytest.approx(453.592 / 1000) == LBS_PER_MWH_TO_G_PER_KWH


def test_the_moer_is_read_at_horizon_zero_of_the_co2_moer_forecast(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    route = moer_route(api)

    make_source(signal_index=False).fetch_carbon(["US-CAL-CISO"], now=NOW)

    assert dict(route.calls.last.request.url.params) == {
        "region": "CAISO_NORTH",
        "signal_type": "co2_moer",
        "horizon_hours": "0",
    }


def test_the_signal_index_is_a_percentile_and_never_a_g_per_kwh_figure(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    route = index_route(api)

    [reading] = make_source(moer=False).fetch_carbon(["US-NW-PSCO"], now=NOW)

    assert reading.unit is CarbonUnit.PERCENTILE
    assert reading.value == 96.0
    assert reading.basis is CarbonBasis.MARGINAL
    assert reading.valid_at == datetime(2024, 6, 18, 18, 40, tzinfo=UTC)
    assert dict(route.calls.last.request.url.params) == {
        "region": "PSCO",
        "signal_type": "co2_moer",
    }


def test_both_signals_give_two_readings_of_different_units_per_zone(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    moer_route(api)
    index_route(api, "CAISO_NORTH", status_code=200, json=index_for("CAISO_NORTH"))

    readings = make_source().fetch_carbon(["US-CAL-CISO"], now=NOW)

    assert [(r.unit, r.value) for r in readings] == [
        (CarbonUnit.G_PER_KWH, pytest.approx(394.625, abs=1e-3)),
        (CarbonUnit.PERCENTILE, 96.0),
    ]


def test_zones_without_a_mapped_region_are_skipped_without_any_call(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    assert make_source().fetch_carbon(["DE", "GB"], now=NOW) == []
    assert not api.calls


def test_each_mapped_zone_is_asked_once(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    caiso = moer_route(api)
    psco = moer_route(api, "PSCO", status_code=200, json=moer_for("PSCO"))

    readings = make_source(signal_index=False).fetch_carbon(
        ["US-NW-PSCO", "DE", "US-CAL-CISO", "US-NW-PSCO"], now=NOW
    )

    assert [r.zone for r in readings] == ["US-NW-PSCO", "US-CAL-CISO"]
    assert (caiso.call_count, psco.call_count, login.call_count) == (1, 1, 1)


# -- login and tokens ------------------------------------------------------------------


def test_login_uses_http_basic_and_data_calls_carry_the_bearer_token(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    route = index_route(api)

    make_source(moer=False).fetch_carbon(["US-NW-PSCO"], now=NOW)

    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert login.calls.last.request.headers["Authorization"] == f"Basic {basic}"
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "Basic" not in route.calls.last.request.headers["Authorization"]


def test_the_token_is_kept_across_fetches(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    index_route(api)
    source = make_source(moer=False)

    source.fetch_carbon(["US-NW-PSCO"], now=NOW)
    source.fetch_carbon(["US-NW-PSCO"], now=NOW)

    assert login.call_count == 1


def test_an_expired_token_costs_exactly_one_fresh_login_and_one_retry(
    api: respx.MockRouter, make_source: Callable[..., WattTimeSource]
) -> None:
    login = api.get("/login").mock(
        side_effect=[
            httpx.Response(200, json={"token": TOKEN}),
            httpx.Response(200, json={"token": FRESH_TOKEN}),
        ]
    )
    route = api.get("/v3/signal-index").mock(
        side_effect=[
            httpx.Response(200, json=INDEX),
            httpx.Response(401, text="token expired"),
            httpx.Response(200, json=INDEX),
        ]
    )
    source = make_source(moer=False)
    source.fetch_carbon(["US-NW-PSCO"], now=NOW)

    [reading] = source.fetch_carbon(["US-NW-PSCO"], now=NOW)

    assert reading.value == 96.0
    assert login.call_count == 2
    assert route.call_count == 3
    assert route.calls[1].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert route.calls[2].request.headers["Authorization"] == f"Bearer {FRESH_TOKEN}"


def test_a_second_401_after_a_fresh_login_is_auth_failed(
    api: respx.MockRouter, make_source: Callable[..., WattTimeSource]
) -> None:
    login = api.get("/login").mock(
        side_effect=[
            httpx.Response(200, json={"token": TOKEN}),
            httpx.Response(200, json={"token": FRESH_TOKEN}),
        ]
    )
    route = api.get("/v3/signal-index").mock(return_value=httpx.Response(401, text="no"))

    with pytest.raises(AuthFailed, match="fresh login") as caught:
        make_source(moer=False).fetch_carbon(["US-NW-PSCO"], now=NOW)

    assert (login.call_count, route.call_count) == (2, 2)
    for secret in (PASSWORD, TOKEN, FRESH_TOKEN):
        assert secret not in str(caught.value)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_login_is_auth_failed_naming_the_user_but_never_the_password(
    api: respx.MockRouter, make_source: Callable[..., WattTimeSource], status: int
) -> None:
    api.get("/login").mock(return_value=httpx.Response(status, text="Unauthorized"))
    data = index_route(api)

    with pytest.raises(AuthFailed) as caught:
        make_source(moer=False).fetch_carbon(["US-NW-PSCO"], now=NOW)

    assert USER in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert data.call_count == 0


def test_a_plan_that_does_not_cover_the_region_is_auth_failed_with_the_api_message(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    moer_route(api, status_code=403, json=INVALID_SCOPE)

    with pytest.raises(AuthFailed, match="Invalid scope") as caught:
        make_source(signal_index=False).fetch_carbon(["US-CAL-CISO"], now=NOW)

    assert TOKEN not in str(caught.value)
    assert login.call_count == 1


def test_a_login_body_without_a_token_is_bad_payload(
    api: respx.MockRouter, make_source: Callable[..., WattTimeSource]
) -> None:
    api.get("/login").mock(return_value=httpx.Response(200, json={"tokn": "x"}))

    with pytest.raises(BadPayload) as caught:
        make_source(moer=False).fetch_carbon(["US-NW-PSCO"], now=NOW)

    assert caught.value.field == "token"


def test_missing_credentials_are_a_config_error_naming_them() -> None:
    with pytest.raises(ConfigError) as caught:
        build("wt", {"username": USER, "regions": REGIONS}, timeout=2.0)

    assert (caught.value.source, caught.value.key) == ("sources.wt.options", "password")


def test_the_password_is_masked_in_the_options_repr(
    make_source: Callable[..., WattTimeSource],
) -> None:
    assert PASSWORD not in repr(make_source().options)


# -- units -----------------------------------------------------------------------------


@pytest.mark.parametrize("units", ["g_co2_per_kwh", "kg_co2_per_mwh", "percentile", ""])
def test_a_moer_in_an_unknown_unit_is_refused_naming_meta_units(
    api: respx.MockRouter,
    login: respx.Route,
    make_source: Callable[..., WattTimeSource],
    units: str,
) -> None:
    moer_route(api, status_code=200, json={**MOER, "meta": {**MOER["meta"], "units": units}})

    with pytest.raises(BadPayload) as caught:
        make_source(signal_index=False).fetch_carbon(["US-CAL-CISO"], now=NOW)

    assert caught.value.field == "meta.units"


@pytest.mark.parametrize("units", ["lbs_co2_per_mwh", "g_co2_per_kwh"])
def test_a_signal_index_that_is_not_a_percentile_is_refused_naming_meta_units(
    api: respx.MockRouter,
    login: respx.Route,
    make_source: Callable[..., WattTimeSource],
    units: str,
) -> None:
    index_route(api, status_code=200, json={**INDEX, "meta": {**INDEX["meta"], "units": units}})

    with pytest.raises(BadPayload) as caught:
        make_source(moer=False).fetch_carbon(["US-NW-PSCO"], now=NOW)

    assert caught.value.field == "meta.units"


def test_a_percentile_above_100_is_bad_payload(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    point = {**INDEX["data"][0], "value": 396.0}
    index_route(api, status_code=200, json={**INDEX, "data": [point]})

    with pytest.raises(BadPayload) as caught:
        make_source(moer=False).fetch_carbon(["US-NW-PSCO"], now=NOW)

    assert caught.value.field == "data[0].value"


# -- malformed bodies ------------------------------------------------------------------


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "meta"),
        (_without(MOER, "meta"), "meta"),
        ({**MOER, "meta": {"region": "CAISO_NORTH"}}, "meta.units"),
        (_without(MOER, "data"), "data"),
        ({**MOER, "data": []}, "data"),
        ({**MOER, "data": {"point_time": "x"}}, "data"),
        ({**MOER, "data": ["870"]}, "data[0]"),
        ({**MOER, "data": [{"point_time": "2022-07-15T00:00:00+00:00"}]}, "data[0].value"),
        (
            {**MOER, "data": [{"point_time": "2022-07-15T00:00:00+00:00", "value": "870"}]},
            "data[0].value",
        ),
        (
            {**MOER, "data": [{"point_time": "2022-07-15T00:00:00+00:00", "value": -5}]},
            "data[0].value",
        ),
        ({**MOER, "data": [{"value": 870}]}, "data[0].point_time"),
        (
            {**MOER, "data": [{"point_time": "2022-07-15 00:00", "value": 870}]},
            "data[0].point_time",
        ),
        ({**MOER, "meta": {**MOER["meta"], "region": "PSCO"}}, "meta.region"),
        ({**MOER, "meta": {**MOER["meta"], "signal_type": "co2_aoer"}}, "meta.signal_type"),
        ([MOER], "(body)"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_malformed_moer_body_is_bad_payload_naming_the_field(
    api: respx.MockRouter,
    login: respx.Route,
    make_source: Callable[..., WattTimeSource],
    body: Any,
    field: str,
) -> None:
    moer_route(api, status_code=200, json=body)

    with pytest.raises(BadPayload) as caught:
        make_source(signal_index=False).fetch_carbon(["US-CAL-CISO"], now=NOW)

    assert caught.value.field == field
    assert "region=CAISO_NORTH" in str(caught.value)


def test_a_data_body_that_is_not_json_is_bad_payload(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    index_route(api, status_code=200, text="<html>")

    with pytest.raises(BadPayload, match="not JSON"):
        make_source(moer=False).fetch_carbon(["US-NW-PSCO"], now=NOW)


# -- temporary failures ------------------------------------------------------------------


def test_a_throttled_fetch_carries_retry_after_and_the_next_call_succeeds(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource]
) -> None:
    api.get("/v3/signal-index").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "42"}, text="slow down"),
            httpx.Response(200, json=INDEX),
        ]
    )
    source = make_source(moer=False)

    with pytest.raises(Throttled) as caught:
        source.fetch_carbon(["US-NW-PSCO"], now=NOW)
    assert caught.value.retry_after == 42

    assert [r.value for r in source.fetch_carbon(["US-NW-PSCO"], now=NOW)] == [96.0]
    assert login.call_count == 1


def test_a_throttled_login_is_throttled(
    api: respx.MockRouter, make_source: Callable[..., WattTimeSource]
) -> None:
    api.get("/login").mock(return_value=httpx.Response(429, headers={"Retry-After": "300"}))

    with pytest.raises(Throttled) as caught:
        make_source().fetch_carbon(["US-NW-PSCO"], now=NOW)

    assert caught.value.retry_after == 300


@pytest.mark.parametrize("path", ["/login", "/v3/forecast"])
def test_a_server_error_is_unavailable(
    api: respx.MockRouter, login: respx.Route, make_source: Callable[..., WattTimeSource], path: str
) -> None:
    # A route for the same path replaces the fixture's; the other one answers normally.
    api.get("/v3/forecast").mock(return_value=httpx.Response(200, json=MOER))
    api.get(path).mock(return_value=httpx.Response(503, text="maintenance"))

    with pytest.raises(Unavailable, match="HTTP 503"):
        make_source(signal_index=False).fetch_carbon(["US-CAL-CISO"], now=NOW)


@pytest.mark.parametrize("path", ["/login", "/v3/forecast"])
@pytest.mark.parametrize("error", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ConnectError])
def test_timeouts_and_connection_failures_are_unavailable(
    api: respx.MockRouter,
    login: respx.Route,
    make_source: Callable[..., WattTimeSource],
    path: str,
    error: type[Exception],
) -> None:
    api.get("/v3/forecast").mock(return_value=httpx.Response(200, json=MOER))
    api.get(path).mock(side_effect=error)

    with pytest.raises(Unavailable):
        make_source(signal_index=False).fetch_carbon(["US-CAL-CISO"], now=NOW)


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"region": "CAISO_NORTH"}, "region"),
        ({"regions": {}}, "regions"),
        ({"regions": {"us-cal-ciso": "CAISO_NORTH"}}, "regions"),
        ({"regions": {"US-CAL-CISO": "CAISO NORTH"}}, "regions"),
        ({"regions": ["CAISO_NORTH"]}, "regions"),
        ({"base_url": "http://api.watttime.org"}, "base_url"),
        ({"username": ""}, "username"),
        ({"password": ""}, "password"),
        ({"moer": False, "signal_index": False}, "signal_index"),
    ],
)
def test_bad_options_are_a_config_error_naming_the_key(options: dict[str, Any], key: str) -> None:
    merged = {"username": USER, "password": PASSWORD, "regions": REGIONS, **options}

    with pytest.raises(ConfigError) as caught:
        build("wt", merged, timeout=2.0)

    assert (caught.value.source, caught.value.key) == ("sources.wt.options", key)
    assert PASSWORD not in str(caught.value)


def test_an_unknown_option_error_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown option; known: username, password, regions"):
        build(
            "wt",
            {"username": USER, "password": PASSWORD, "regions": REGIONS, "latitude": 1},
            timeout=2.0,
        )
