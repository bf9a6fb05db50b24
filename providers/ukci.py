"""NESO's Carbon Intensity API for Great Britain (a CarbonSource).

Contract (see :class:`arbiter.ports.CarbonSource`): ``fetch_carbon(zones, now=...)``
covers one zone, ``GB``; asked for anything else it makes no call and returns nothing.
For ``GB`` it returns one reading for the current half-hour settlement period:

* ``value``: ``intensity.actual`` (estimated from metered generation) when the API has
  it, else ``intensity.forecast`` with ``forecast=True`` (``actual`` stays null until the
  half-hour has closed);
* ``valid_at``: the period's ``from`` (written like ``2018-01-20T12:00Z``);
* unit gCO2/kWh; basis ``direct``. NESO counts "CO2 emissions related to electricity
  generation only": the emissions of metered power stations and interconnector
  imports, plus transmission and distribution losses — operational (stack) emissions,
  no upstream or life-cycle emissions (carbonintensity.org.uk, "About the Carbon
  Intensity API"; NESO, "Carbon Intensity Forecast Methodology"). It is CO2, not
  CO2eq, so it reads slightly below a CO2eq figure for the same grid.

Call: ``GET {base_url}/intensity`` (no authentication) →
``{"data": [{"from", "to", "intensity": {"forecast", "actual", "index"}}]}``.

Errors follow :mod:`providers.http`: 429 → Throttled (with ``Retry-After``), 5xx and
timeouts → Unavailable, a body of the wrong shape → BadPayload naming the field
(``data``, ``data[0].intensity.forecast``). Nothing is retried here; the poller retries
temporary errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, ValidationError

from arbiter.domain.market import CarbonBasis, CarbonReading, CarbonUnit
from arbiter.errors import BadPayload
from providers.http import get_json, make_client
from providers.options import (
    SourceOptions,
    check_timeout,
    https_url,
)

DEFAULT_BASE_URL = "https://api.carbonintensity.org.uk"
ZONE = "GB"


class UkCarbonIntensityOptions(SourceOptions):
    """``[sources.NAME.options]`` of a source of kind ``ukci``."""

    base_url: Annotated[str, AfterValidator(https_url)] = DEFAULT_BASE_URL


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> UkCarbonIntensitySource:
    """The registry's factory for ``kind = "ukci"``. Makes no network call."""
    parsed = UkCarbonIntensityOptions.parse(name, options)
    check_timeout(name, timeout)
    return UkCarbonIntensitySource(name, parsed, timeout=timeout)


class UkCarbonIntensitySource:
    """GB carbon intensity from the NESO Carbon Intensity API (see the module docstring)."""

    def __init__(self, name: str, options: UkCarbonIntensityOptions, *, timeout: float) -> None:
        self.name = name
        self.options = options
        self._client = make_client(options.base_url, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def fetch_carbon(self, zones: Sequence[str], *, now: datetime) -> list[CarbonReading]:
        if ZONE not in zones:
            return []
        body = get_json(self._client, "/intensity", source=self.name)
        return [self._reading(body)]

    def _reading(self, body: Any) -> CarbonReading:
        if not isinstance(body, dict):
            self._fail(f"expected an object, got {type(body).__name__}", "(body)")
        data = body.get("data")
        if not isinstance(data, list):
            self._fail("missing" if data is None else "expected a list", "data")
        if not data:
            self._fail("empty: no settlement period", "data")
        period = data[0]
        if not isinstance(period, dict):
            self._fail("expected an object", "data[0]")
        intensity = period.get("intensity")
        if not isinstance(intensity, dict):
            self._fail(
                "missing" if intensity is None else "expected an object", "data[0].intensity"
            )
        is_forecast = intensity.get("actual") is None
        key = "forecast" if is_forecast else "actual"
        value = intensity.get(key)
        field = f"data[0].intensity.{key}"
        if value is None:
            self._fail("missing (and no actual value either)", field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._fail(f"expected a number, got {type(value).__name__}", field)
        if not math.isfinite(value) or value < 0:
            self._fail(f"expected a finite number ≥ 0, got {value!r}", field)
        try:
            return CarbonReading(
                zone=ZONE,
                valid_at=self._time(period.get("from")),
                value=float(value),
                unit=CarbonUnit.G_PER_KWH,
                basis=CarbonBasis.DIRECT,
                source=self.name,
                forecast=is_forecast,
            )
        except ValidationError as exc:
            self._fail(str(exc.errors()[0]["msg"]), "data[0]")

    def _time(self, text: Any) -> datetime:
        field = "data[0].from"
        if not isinstance(text, str):
            self._fail("missing" if text is None else "expected a string", field)
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            self._fail(f"not an ISO 8601 time: {text!r}", field)
        if value.tzinfo is None:
            self._fail(f"time without a timezone: {text!r}", field)
        return value

    def _fail(self, message: str, field: str) -> NoReturn:
        raise BadPayload(f"GET /intensity: {message}", source=self.name, field=field)
