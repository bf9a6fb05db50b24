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

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import urlsplit

import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
)

from arbiter.domain.market import CarbonBasis, CarbonReading, CarbonUnit
from arbiter.errors import BadPayload, ConfigError
from arbiter.logs import get_logger
from providers.http import check_response, make_client, translate_transport_errors

DEFAULT_BASE_URL = "https://api.electricitymap.org/v3"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_BASES = {"lifecycle": CarbonBasis.LIFECYCLE, "direct": CarbonBasis.DIRECT}


def _http_url(value: str) -> str:
    """An https URL; plain http only for a loopback server (a local fake or proxy)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an https:// URL, got {value!r}")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        raise ValueError(f"must use https (plain http only on 127.0.0.1/localhost): {value!r}")
    return value.rstrip("/")


def _not_blank(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


class ElectricityMapsOptions(BaseModel):
    """``[sources.NAME.options]`` of a source of kind ``electricitymaps``."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    token: Annotated[SecretStr, AfterValidator(_not_blank)]
    """API token, sent as the ``auth-token`` header. Never logged."""
    base_url: Annotated[str, AfterValidator(_http_url)] = DEFAULT_BASE_URL
    emission_factor_type: Literal["lifecycle", "direct"] = "lifecycle"
    """``lifecycle`` (Electricity Maps' default) or ``direct`` (operational only)."""
    forecast: bool = False
    """Also fetch the hourly forecast (a commercial endpoint)."""

    @classmethod
    def parse(cls, name: str, options: Mapping[str, Any]) -> ElectricityMapsOptions:
        """Validate ``options``; raise ConfigError naming ``sources.NAME.options`` and the key."""
        where = f"sources.{name}.options"
        if not isinstance(options, Mapping):
            raise ConfigError("expected a table of options", source=where)
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in error["loc"]) or None
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = f"unknown option; known: {', '.join(cls.model_fields)}"
            # ``from None``: the pydantic error would repeat the input, maybe a secret.
            raise ConfigError(message, source=where, key=key) from None


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> ElectricityMapsSource:
    """The registry's factory for ``kind = "electricitymaps"``. Makes no network call."""
    parsed = ElectricityMapsOptions.parse(name, options)
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(
            "must be a positive number of seconds", source=f"sources.{name}", key="timeout"
        )
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
                detail=(error or response.text[:200]).strip(),
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


class _Body:
    """Reads one response body; every BadPayload names the request and the field."""

    def __init__(self, source: str, request: str) -> None:
        self.source = source
        self.request = request

    def fail(self, message: str, field: str) -> NoReturn:
        raise BadPayload(f"{self.request}: {message}", source=self.source, field=field)

    @staticmethod
    def _path(where: str, key: str) -> str:
        return f"{where}.{key}" if where else key

    def obj(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            self.fail(f"expected an object, got {type(value).__name__}", where or "(body)")

    def field(self, obj: dict[str, Any], key: str, kind: type, where: str = "") -> Any:
        value = obj.get(key)
        if value is None:
            self.fail("missing", self._path(where, key))
        if not isinstance(value, kind) or isinstance(value, bool):
            self.fail(
                f"expected {kind.__name__}, got {type(value).__name__}", self._path(where, key)
            )
        return value

    def number(self, obj: dict[str, Any], key: str, where: str = "") -> float:
        value = obj.get(key)
        if value is None:
            self.fail("missing", self._path(where, key))
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"expected a number, got {type(value).__name__}", self._path(where, key))
        if not math.isfinite(value) or value < 0:
            self.fail(f"expected a finite number ≥ 0, got {value!r}", self._path(where, key))
        return float(value)

    def time(self, obj: dict[str, Any], key: str, where: str = "") -> datetime:
        text = self.field(obj, key, str, where)
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"not an ISO 8601 time: {text!r}", self._path(where, key))
        if value.tzinfo is None:
            self.fail(f"time without a timezone: {text!r}", self._path(where, key))
        return value

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
