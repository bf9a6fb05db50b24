"""Electricity Maps API v3: grid carbon intensity per zone (a CarbonSource).

Contract (see :class:`arbiter.ports.CarbonSource`): ``fetch_carbon(zones, now=...)``
returns one reading per requested zone Electricity Maps knows, plus its hourly
forecast when ``forecast = true``. Readings are in gCO2eq/kWh, basis ``lifecycle`` or
``direct`` as the response's ``emissionFactorType`` says (never assumed), ``valid_at``
the hour the API gives (``datetime``), never ``now``.

Calls, one zone after the other, each with the header ``auth-token: <token>``:

* ``GET {base_url}/carbon-intensity/latest?zone=Z&emissionFactorType=T&disableCallerLookup=true``
  → ``{zone, carbonIntensity, datetime, emissionFactorType, isEstimated, ...}``;
* with ``forecast = true`` (a commercial endpoint), also
  ``GET {base_url}/carbon-intensity/forecast?zone=Z&emissionFactorType=T&disableCallerLookup=true``
  → ``{zone, forecast: [{carbonIntensity, datetime}], updatedAt}``: one reading per
  point, ``forecast=True``. Its body does not state its basis; the readings carry the
  requested ``emissionFactorType`` (or the body's, if it ever states one).

``disableEstimations`` is not sent: Electricity Maps' estimate for the current hour is
what we want (a measured value often arrives hours later). ``disableCallerLookup=true``
stops the API from answering for the caller's IP location when a zone is not
understood; a body for another zone than the one asked is refused (BadPayload).

Errors: a zone the API does not know or has no recent data for (HTTP 404, or an error
body such as ``{"error": "No recent data for zone \\"X\\""}``) is skipped with a
warning — the other zones are still returned. A 200 body of the wrong shape raises
BadPayload naming the field (``carbonIntensity``, ``forecast[3].datetime``). Other
failures follow :mod:`providers.http`: 429 → Throttled (with ``Retry-After``), 5xx and
timeouts → Unavailable, 401/403 → AuthFailed (a personal token asking for the forecast
gets this too). Nothing is retried here; the poller retries temporary errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import httpx
from pydantic import (
    AfterValidator,
    SecretStr,
    ValidationError,
)

from arbiter.domain.market import CarbonBasis, CarbonReading, CarbonUnit
from arbiter.errors import BadPayload
from arbiter.logs import get_logger
from providers.http import (
    BodyReader,
    check_response,
    make_client,
    mask_credentials,
    request_credentials,
    translate_transport_errors,
)
from providers.options import (
    SourceOptions,
    check_timeout,
    https_url,
    not_blank,
)

DEFAULT_BASE_URL = "https://api.electricitymap.org/v3"
_BASES = {"lifecycle": CarbonBasis.LIFECYCLE, "direct": CarbonBasis.DIRECT}


class ElectricityMapsOptions(SourceOptions):
    """``[sources.NAME.options]`` of a source of kind ``electricitymaps``."""

    token: Annotated[SecretStr, AfterValidator(not_blank)]
    """API token, sent as the ``auth-token`` header. Never logged."""
    base_url: Annotated[str, AfterValidator(https_url)] = DEFAULT_BASE_URL
    emission_factor_type: Literal["lifecycle", "direct"] = "lifecycle"
    """``lifecycle`` (Electricity Maps' default) or ``direct`` (operational only)."""
    forecast: bool = False
    """Also fetch the hourly forecast (a commercial endpoint)."""


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> ElectricityMapsSource:
    """The registry's factory for ``kind = "electricitymaps"``. Makes no network call."""
    parsed = ElectricityMapsOptions.parse(name, options)
    check_timeout(name, timeout)
    return ElectricityMapsSource(name, parsed, timeout=timeout)


class ElectricityMapsSource:
    """Carbon intensity from Electricity Maps (see the module docstring)."""

    def __init__(self, name: str, options: ElectricityMapsOptions, *, timeout: float) -> None:
        self.name = name
        self.options = options
        self._client = make_client(options.base_url, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def fetch_carbon(self, zones: Sequence[str], *, now: datetime) -> list[CarbonReading]:
        readings: list[CarbonReading] = []
        for zone in dict.fromkeys(zones):
            body = self._get("/carbon-intensity/latest", zone)
            if body is None:
                continue
            readings.append(self._latest(zone, body))
            if self.options.forecast:
                body = self._get("/carbon-intensity/forecast", zone)
                if body is not None:
                    readings.extend(self._forecast(zone, body))
        return readings

    # -- HTTP ----------------------------------------------------------------------

    def _get(self, path: str, zone: str) -> Any | None:
        """The decoded body, or None when the API says it has nothing for ``zone``."""
        params = {
            "zone": zone,
            "emissionFactorType": self.options.emission_factor_type,
            "disableCallerLookup": "true",
        }
        headers = {"auth-token": self.options.token.get_secret_value()}
        with translate_transport_errors(self.name):
            response = self._client.get(path, params=params, headers=headers)
        status = response.status_code
        body = _json_or_none(response)
        error = _error_message(body)
        if status == 404 or (error is not None and status < 500 and status not in (401, 403, 429)):
            get_logger("provider.electricitymaps", source=self.name).warning(
                "zone skipped: Electricity Maps has no data for it",
                zone=zone,
                endpoint=path,
                status=status,
                detail=mask_credentials(
                    error or response.text, request_credentials(response.request)
                ),
            )
            return None
        check_response(response, source=self.name)
        if body is None:
            raise BadPayload(f"GET {path}?zone={zone}: body is not JSON", source=self.name)
        return body

    # -- bodies --------------------------------------------------------------------

    def _latest(self, zone: str, body: Any) -> CarbonReading:
        read = _Body(self.name, f"GET /carbon-intensity/latest?zone={zone}")
        read.obj(body, "")
        read.same_zone(body, zone)
        value = read.number(body, "carbonIntensity")
        valid_at = read.time(body, "datetime")
        factor_type = read.field(body, "emissionFactorType", str)
        if factor_type not in _BASES:
            read.fail(f"unknown emission factor type {factor_type!r}", "emissionFactorType")
        return read.reading(
            zone=zone,
            value=value,
            valid_at=valid_at,
            basis=_BASES[factor_type],
            forecast=False,
            where="",
        )

    def _forecast(self, zone: str, body: Any) -> list[CarbonReading]:
        read = _Body(self.name, f"GET /carbon-intensity/forecast?zone={zone}")
        read.obj(body, "")
        read.same_zone(body, zone)
        factor_type = body.get("emissionFactorType", self.options.emission_factor_type)
        if factor_type not in _BASES:
            read.fail(f"unknown emission factor type {factor_type!r}", "emissionFactorType")
        points = read.field(body, "forecast", list)
        readings = []
        for i, point in enumerate(points):
            where = f"forecast[{i}]"
            read.obj(point, where)
            readings.append(
                read.reading(
                    zone=zone,
                    value=read.number(point, "carbonIntensity", where),
                    valid_at=read.time(point, "datetime", where),
                    basis=_BASES[factor_type],
                    forecast=True,
                    where=where,
                )
            )
        return readings


def _json_or_none(response: httpx.Response) -> Any | None:
    try:
        return response.json()
    except ValueError:
        return None


def _error_message(body: Any) -> str | None:
    """The message of an Electricity Maps error body, if ``body`` is one."""
    if not isinstance(body, dict) or "carbonIntensity" in body or "forecast" in body:
        return None
    if isinstance(body.get("error"), str):
        return str(body["error"])
    if body.get("status") == "error" and isinstance(body.get("message"), str):
        return str(body["message"])
    return None


class _Body(BodyReader):
    """Reads one Electricity Maps response body."""

    def same_zone(self, body: dict[str, Any], zone: str) -> None:
        answered = body.get("zone")
        if answered is not None and answered != zone:
            self.fail(f"answered for zone {answered!r}, not {zone!r}", "zone")

    def reading(
        self,
        *,
        zone: str,
        value: float,
        valid_at: datetime,
        basis: CarbonBasis,
        forecast: bool,
        where: str,
    ) -> CarbonReading:
        try:
            return CarbonReading(
                zone=zone,
                valid_at=valid_at,
                value=value,
                unit=CarbonUnit.G_PER_KWH,
                basis=basis,
                source=self.source,
                forecast=forecast,
            )
        except ValidationError as exc:
            self.fail(str(exc.errors()[0]["msg"]), where or "(body)")
