"""WattTime API v3: marginal emissions (MOER) and its percentile index (a CarbonSource).

Contract (see :class:`arbiter.ports.CarbonSource`): ``fetch_carbon(zones, now=...)``
answers only for the zones mapped to a WattTime region in the ``regions`` option
(``{"US-CAL-CISO": "CAISO_NORTH"}``); other zones are not covered and get nothing.
For each covered zone it returns, as configured:

* ``moer``: the current marginal operating emissions rate, basis ``marginal``, converted
  from the API's ``lbs_co2_per_mwh`` to gCO2/kWh (× 0.453592: 1 lb = 453.592 g and
  1 MWh = 1000 kWh), ``valid_at`` the point's ``point_time``;
* ``signal_index``: the signal-index percentile (0-100: how dirty the grid is now
  relative to the recent past), unit ``percentile``, basis ``marginal``. It is an
  index, not an intensity, and is never converted to g/kWh.

Both are checked against ``meta.units``; any other unit is refused (BadPayload naming
``meta.units``) rather than guessed.

Calls, one zone after the other:

* ``GET {base_url}/login`` with HTTP Basic (username, password) → ``{"token": ...}``,
  once, then whenever a data call answers 401 (tokens expire after 30 minutes);
* ``GET {base_url}/v3/forecast?region=R&signal_type=co2_moer&horizon_hours=0``
  (``Authorization: Bearer <token>``) → ``{data: [{point_time, value}], meta: {units,
  ...}}``; WattTime's way to read the current MOER: ``data[0]`` is the interval in
  progress. It needs a plan that covers the region (free accounts: ``CAISO_NORTH``);
* ``GET {base_url}/v3/signal-index?region=R&signal_type=co2_moer`` → the same shape,
  ``meta.units = "percentile"`` (free for every region).

Errors: a data call answered 401 triggers exactly one fresh login and one retry of that
call; a second 401, or a refused login, raises AuthFailed (the message never holds the
password or the token). 403 (the plan does not cover the region) → AuthFailed. The rest
follows :mod:`providers.http`: 429 → Throttled (with ``Retry-After``), 5xx and timeouts
→ Unavailable, a body of the wrong shape → BadPayload naming the field. Nothing else is
retried here; the poller retries temporary errors.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

import httpx
from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from arbiter.domain.market import CarbonBasis, CarbonReading, CarbonUnit
from arbiter.errors import AuthFailed, BadPayload
from providers.http import BodyReader, check_response, make_client, translate_transport_errors
from providers.options import (
    SourceOptions,
    check_timeout,
    https_url,
    not_blank,
)

DEFAULT_BASE_URL = "https://api.watttime.org"
LBS_PER_MWH_TO_G_PER_KWH = 0.453592
"""1 lb = 453.592 g and 1 MWh = 1000 kWh, so 1 lb/MWh = 0.453592 g/kWh."""
_MOER_UNITS = {"lbs_co2_per_mwh": LBS_PER_MWH_TO_G_PER_KWH}
_INDEX_UNITS = frozenset({"percentile"})
_SIGNAL = "co2_moer"
_ZONE = re.compile(r"[A-Z]{2}(-[A-Z0-9]+)*")
_REGION = re.compile(r"[A-Za-z0-9_]+")


def _regions(value: dict[str, str]) -> dict[str, str]:
    for zone, region in value.items():
        if not _ZONE.fullmatch(zone):
            raise ValueError(f"{zone!r} is not a grid zone key like 'US-CAL-CISO'")
        if not _REGION.fullmatch(region):
            raise ValueError(f"{region!r} (for {zone}) is not a WattTime region like 'CAISO_NORTH'")
    return value


class WattTimeOptions(SourceOptions):
    """``[sources.NAME.options]`` of a source of kind ``watttime``."""

    username: Annotated[str, Field(min_length=1)]
    password: Annotated[SecretStr, AfterValidator(not_blank)]
    """Sent only to ``/login`` (HTTP Basic). Never logged."""
    regions: Annotated[dict[str, str], Field(min_length=1), AfterValidator(_regions)]
    """Grid zone → WattTime region code, e.g. ``{"US-CAL-CISO": "CAISO_NORTH"}``."""
    base_url: Annotated[str, AfterValidator(https_url)] = DEFAULT_BASE_URL
    moer: bool = True
    """Fetch the current MOER in g/kWh (needs a plan covering the region)."""
    signal_index: bool = True
    """Fetch the signal-index percentile (free)."""

    @field_validator("signal_index")
    @classmethod
    def _something_to_fetch(cls, value: bool, info: ValidationInfo) -> bool:
        if not value and not info.data.get("moer", True):
            raise ValueError("moer and signal_index are both false: nothing to fetch")
        return value


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> WattTimeSource:
    """The registry's factory for ``kind = "watttime"``. Makes no network call."""
    parsed = WattTimeOptions.parse(name, options)
    check_timeout(name, timeout)
    return WattTimeSource(name, parsed, timeout=timeout)


class WattTimeSource:
    """MOER and signal index from WattTime (see the module docstring).

    Keeps its login token in memory; one fetch at a time (a lock guards the token).
    """

    def __init__(self, name: str, options: WattTimeOptions, *, timeout: float) -> None:
        self.name = name
        self.options = options
        self._client = make_client(options.base_url, timeout=timeout)
        self._token: SecretStr | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def fetch_carbon(self, zones: Sequence[str], *, now: datetime) -> list[CarbonReading]:
        readings: list[CarbonReading] = []
        with self._lock:
            for zone in dict.fromkeys(zones):
                region = self.options.regions.get(zone)
                if region is None:
                    continue
                params = {"region": region, "signal_type": _SIGNAL}
                if self.options.moer:
                    body = self._call("/v3/forecast", {**params, "horizon_hours": "0"})
                    readings.append(self._moer(zone, region, body))
                if self.options.signal_index:
                    body = self._call("/v3/signal-index", params)
                    readings.append(self._index(zone, region, body))
        return readings

    # -- HTTP ----------------------------------------------------------------------

    def _login(self) -> SecretStr:
        auth = httpx.BasicAuth(self.options.username, self.options.password.get_secret_value())
        with translate_transport_errors(self.name):
            response = self._client.get("/login", auth=auth)
        if response.status_code in (401, 403):
            raise AuthFailed(
                f"GET /login: HTTP {response.status_code}: WattTime refused the password "
                f"of user {self.options.username!r}",
                source=self.name,
            )
        check_response(response, source=self.name)
        read = _Body(self.name, "GET /login")
        token = read.field(read.obj(_json(response, self.name, "/login"), ""), "token", str)
        self._token = SecretStr(token)
        return self._token

    def _send(self, path: str, params: Mapping[str, str], token: SecretStr) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
        with translate_transport_errors(self.name):
            return self._client.get(path, params=params, headers=headers)

    def _call(self, path: str, params: Mapping[str, str]) -> Any:
        """GET with the current token; on 401 log in again once and retry once."""
        token = self._token or self._login()
        response = self._send(path, params, token)
        if response.status_code == 401:
            self._token = None
            response = self._send(path, params, self._login())
            if response.status_code == 401:
                raise AuthFailed(
                    f"GET {path}: HTTP 401 even with a token from a fresh login",
                    source=self.name,
                )
        check_response(response, source=self.name)
        return _json(response, self.name, path)

    # -- bodies --------------------------------------------------------------------

    def _moer(self, zone: str, region: str, body: Any) -> CarbonReading:
        read = _Body(self.name, f"GET /v3/forecast?region={region}")
        point, units = read.first_point(body, region)
        factor = _MOER_UNITS.get(units)
        if factor is None:
            read.fail(
                f"unknown unit {units!r}; expected one of {sorted(_MOER_UNITS)}", "meta.units"
            )
        value = read.number(point, "value", "data[0]")
        return read.reading(
            zone=zone,
            valid_at=read.time(point, "point_time", "data[0]"),
            value=value * factor,
            unit=CarbonUnit.G_PER_KWH,
        )

    def _index(self, zone: str, region: str, body: Any) -> CarbonReading:
        read = _Body(self.name, f"GET /v3/signal-index?region={region}")
        point, units = read.first_point(body, region)
        if units not in _INDEX_UNITS:
            read.fail(f"unknown unit {units!r}; expected 'percentile'", "meta.units")
        value = read.number(point, "value", "data[0]")
        if value > 100:
            read.fail(f"a percentile must be within [0, 100], got {value:g}", "data[0].value")
        return read.reading(
            zone=zone,
            valid_at=read.time(point, "point_time", "data[0]"),
            value=value,
            unit=CarbonUnit.PERCENTILE,
        )


def _json(response: httpx.Response, source: str, path: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise BadPayload(f"GET {path}: body is not JSON", source=source) from exc


class _Body(BodyReader):
    """Reads one WattTime response body."""

    def first_point(self, body: Any, region: str) -> tuple[dict[str, Any], str]:
        """``data[0]`` and ``meta.units`` of a v3 signal body, after checking ``meta``."""
        body = self.obj(body, "")
        meta = self.obj(self.field(body, "meta", dict), "meta")
        units = self.field(meta, "units", str, "meta")
        if meta.get("region") not in (None, region):
            self.fail(f"answered for region {meta['region']!r}, not {region!r}", "meta.region")
        if meta.get("signal_type") not in (None, _SIGNAL):
            self.fail(f"signal {meta['signal_type']!r}, not {_SIGNAL!r}", "meta.signal_type")
        data = self.field(body, "data", list)
        if not data:
            self.fail("empty: no data point", "data")
        return self.obj(data[0], "data[0]"), units

    def reading(
        self, *, zone: str, valid_at: datetime, value: float, unit: CarbonUnit
    ) -> CarbonReading:
        try:
            return CarbonReading(
                zone=zone,
                valid_at=valid_at,
                value=value,
                unit=unit,
                basis=CarbonBasis.MARGINAL,
                source=self.source,
                forecast=False,
            )
        except ValidationError as exc:
            self.fail(str(exc.errors()[0]["msg"]), "data[0]")
