"""Static annual carbon factors per grid zone: the fallback CarbonSource.

Contract (see :class:`arbiter.ports.CarbonSource`): ``fetch_carbon(zones, now=...)``
returns one reading per requested zone the table has, and nothing for the others (the
table has no row for a zone no public source covers; it never invents one). Makes no
network call and never reads the clock.

The table is ``arbiter/data/carbon_static.csv`` (derivation, sources and licences in
``arbiter/data/carbon_static.PROVENANCE.md``), or the file named by the ``file``
option, with the header ``zone,gco2_per_kwh,basis,year,source``:

* ``zone``: grid zone key (``DE``, ``US-CAL-CISO``), each at most once;
* ``gco2_per_kwh``: a finite number ≥ 0, the annual average intensity in gCO2eq/kWh;
* ``basis``: ``lifecycle`` or ``direct`` (an annual average is never ``marginal``);
* ``year``: the year the factor describes (1990-2100);
* ``source``: where the number comes from (free text, required).

An annual factor is not a live reading, so it must never look fresh: a reading's
``valid_at`` is the start of the factor's ``year`` (UTC), not ``now``. Judged by the age
of ``valid_at`` against any ``stale_after`` of hours, a static factor is always stale:
the snapshot may use it only as a labelled fallback for zones without a live reading.
(In a backtest of a year before ``year`` the reading lies in the future of ``now``; it
is still the best static estimate there is.)

The table is read and validated whole when the source is built: an error raises
CatalogError naming ``file:line: field`` (an unreadable ``file`` is a ConfigError
naming the option).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from arbiter.domain.market import CarbonBasis, CarbonReading, CarbonUnit
from arbiter.errors import CatalogError, ConfigError
from providers.options import (
    SourceOptions,
)

SHIPPED = "arbiter/data/carbon_static.csv"
COLUMNS = ("zone", "gco2_per_kwh", "basis", "year", "source")
_BASES = {"lifecycle": CarbonBasis.LIFECYCLE, "direct": CarbonBasis.DIRECT}
_YEARS = range(1990, 2101)
_ZONE = re.compile(r"[A-Z]{2}(-[A-Z0-9]+)*")
"""A grid zone key, as the region catalog's ``grid_zone`` column writes it."""


class StaticCarbonOptions(SourceOptions):
    """``[sources.NAME.options]`` of a source of kind ``static-carbon``."""

    file: Path | None = None
    """A replacement table in the shipped format; default: the shipped table."""


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> StaticCarbonSource:
    """The registry's factory for ``kind = "static-carbon"``; ``timeout`` is unused.

    Reads and validates the table now, so a bad table stops the daemon at start-up.
    """
    parsed = StaticCarbonOptions.parse(name, options)
    if parsed.file is None:
        where = SHIPPED
        text = resources.files("arbiter").joinpath("data", "carbon_static.csv").read_text("utf-8")
    else:
        where = str(parsed.file)
        try:
            text = parsed.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"cannot read {where}: {reason}", source=f"sources.{name}.options", key="file"
            ) from None
    return StaticCarbonSource(name, parse_table(text, source=where))


class StaticFactor(BaseModel):
    """One row of the table."""

    model_config = ConfigDict(frozen=True)

    zone: str
    gco2_per_kwh: float
    basis: CarbonBasis
    year: int
    source: str


def parse_table(text: str, *, source: str) -> dict[str, StaticFactor]:
    """The table's rows by zone; CatalogError naming ``source:line: field`` if invalid."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        got = ",".join(reader.fieldnames or []) or "nothing"
        raise CatalogError(f"header must be {','.join(COLUMNS)}, got {got}", source=source, line=1)
    factors: dict[str, StaticFactor] = {}
    for row in reader:
        factor = _factor(row, source=source, line=reader.line_num)
        if factor.zone in factors:
            raise CatalogError(
                f"zone {factor.zone} is listed twice",
                source=source,
                line=reader.line_num,
                field="zone",
            )
        factors[factor.zone] = factor
    if not factors:
        raise CatalogError("no rows: the table is empty", source=source, line=1)
    return factors


def _factor(row: Mapping[str | None, Any], *, source: str, line: int) -> StaticFactor:
    def fail(message: str, field: str | None = None) -> CatalogError:
        return CatalogError(message, source=source, line=line, field=field)

    if None in row:
        raise fail(f"more fields than the header's {len(COLUMNS)}")
    for column in COLUMNS:
        if row.get(column) is None:
            raise fail(f"fewer fields than the header's {len(COLUMNS)}", column)
    values = {column: str(row[column]).strip() for column in COLUMNS}

    zone = values["zone"]
    if not _ZONE.fullmatch(zone):
        raise fail(f"expected a grid zone key like DE or US-CAL-CISO, got {zone!r}", "zone")
    try:
        intensity = float(values["gco2_per_kwh"])
    except ValueError:
        raise fail(f"expected a number, got {values['gco2_per_kwh']!r}", "gco2_per_kwh") from None
    if not math.isfinite(intensity) or intensity < 0:
        raise fail(f"expected a finite number ≥ 0, got {values['gco2_per_kwh']!r}", "gco2_per_kwh")
    basis = _BASES.get(values["basis"])
    if basis is None:
        raise fail(f"expected lifecycle or direct, got {values['basis']!r}", "basis")
    try:
        year = int(values["year"])
    except ValueError:
        raise fail(f"expected a year like 2024, got {values['year']!r}", "year") from None
    if year not in _YEARS:
        raise fail(f"expected a year within {_YEARS.start}-{_YEARS.stop - 1}, got {year}", "year")
    if not values["source"]:
        raise fail("must say where the number comes from", "source")
    return StaticFactor(
        zone=zone, gco2_per_kwh=intensity, basis=basis, year=year, source=values["source"]
    )


class StaticCarbonSource:
    """Annual factors from a validated table (see the module docstring)."""

    def __init__(self, name: str, factors: Mapping[str, StaticFactor]) -> None:
        self.name = name
        self.factors = dict(factors)

    def close(self) -> None:
        """Nothing to release; here so every source can be closed alike."""

    def fetch_carbon(self, zones: Sequence[str], *, now: datetime) -> list[CarbonReading]:
        wanted = dict.fromkeys(zones)
        return [self._reading(self.factors[zone]) for zone in wanted if zone in self.factors]

    def _reading(self, factor: StaticFactor) -> CarbonReading:
        return CarbonReading(
            zone=factor.zone,
            valid_at=datetime(factor.year, 1, 1, tzinfo=UTC),
            value=factor.gco2_per_kwh,
            unit=CarbonUnit.G_PER_KWH,
            basis=factor.basis,
            source=self.name,
            forecast=False,
        )
