"""The static carbon factors: the shipped table, its validation and its readings."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from arbiter.catalog import load_catalog
from arbiter.domain.market import CarbonBasis, CarbonUnit
from arbiter.errors import CatalogError, ConfigError
from providers.static_carbon import COLUMNS, StaticCarbonSource, build

NOW = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)
HEADER = ",".join(COLUMNS)


def shipped_rows() -> list[dict[str, str]]:
    text = resources.files("arbiter").joinpath("data", "carbon_static.csv").read_text("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def table(tmp_path: Path) -> Callable[..., Path]:
    def write(*lines: str, header: str = HEADER) -> Path:
        path = tmp_path / "factors.csv"
        path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
        return path

    return write


# -- the shipped table -----------------------------------------------------------------


def test_the_shipped_table_loads_and_validates() -> None:
    source = build("static", {}, timeout=1.0)

    assert len(source.factors) == len(shipped_rows()) == 49


def test_every_shipped_zone_is_a_grid_zone_of_the_region_catalog_and_appears_once() -> None:
    catalog_zones = {region.grid_zone for region in load_catalog()}
    zones = [row["zone"] for row in shipped_rows()]

    assert len(zones) == len(set(zones))
    assert set(zones) <= catalog_zones


def test_the_shipped_table_is_sorted_by_zone() -> None:
    zones = [row["zone"] for row in shipped_rows()]

    assert zones == sorted(zones)


def test_every_shipped_factor_states_a_direct_basis_a_known_year_and_its_source() -> None:
    for row in shipped_rows():
        assert row["basis"] == "direct", row
        if row["source"].startswith("GCP region-carbon-info "):
            assert row["year"] == "2024"
            assert row["source"].startswith("GCP region-carbon-info 2024 grid: gcp:")
        else:
            assert row["year"] == "2020"
            assert row["source"].startswith("CCF b7a049c")


@pytest.mark.parametrize(
    ("zone", "value", "year"),
    [
        ("DE", 275.82, 2024),  # gcp europe-west3 and europe-west10, both 275.82
        ("US-MIDA-PJM", 323.05, 2024),  # gcp us-east4/us-east5; CCF rows for AWS not used
        ("SE-SE3", 2.73, 2024),  # gcp europe-north2
        ("IE", 278.6, 2020),  # no GCP region: CCF aws eu-west-1 = azure northeurope
        ("US-SW-AZPS", 322.2, 2020),  # CCF: eGRID2020 WECC average for azure westus3
    ],
)
def test_shipped_factors_follow_the_documented_derivation(
    zone: str, value: float, year: int
) -> None:
    [reading] = build("static", {}, timeout=1.0).fetch_carbon([zone], now=NOW)

    assert (reading.value, reading.valid_at.year) == (value, year)


# -- readings --------------------------------------------------------------------------


def test_a_reading_is_valid_from_the_start_of_its_factor_year_not_now() -> None:
    [reading] = build("static", {}, timeout=1.0).fetch_carbon(["FR"], now=NOW)

    assert reading.valid_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert reading.valid_at != NOW
    assert reading.forecast is False
    assert (reading.unit, reading.basis) == (CarbonUnit.G_PER_KWH, CarbonBasis.DIRECT)
    assert reading.source == "static"


def test_a_static_reading_is_older_than_any_stale_after_of_hours_or_days() -> None:
    readings = build("static", {}, timeout=1.0).fetch_carbon(["FR", "IE", "GB"], now=NOW)

    assert all(NOW - r.valid_at > timedelta(days=300) for r in readings)


def test_zones_not_in_the_table_get_no_reading() -> None:
    source = build("static", {}, timeout=1.0)

    readings = source.fetch_carbon(["AT", "NZ", "XX-NOWHERE", "GB", "GB"], now=NOW)

    assert [r.zone for r in readings] == ["GB"]


def test_the_same_call_gives_the_same_readings_whatever_now_is() -> None:
    source = build("static", {}, timeout=1.0)

    assert source.fetch_carbon(["DE"], now=NOW) == source.fetch_carbon(
        ["DE"], now=NOW + timedelta(days=400)
    )


def test_a_replacement_file_replaces_the_shipped_table(table: Callable[..., Path]) -> None:
    path = table("DE,350.5,lifecycle,2023,Operator survey 2023", "FR,20,direct,2022,RTE")

    source = build("static", {"file": str(path)}, timeout=1.0)
    readings = source.fetch_carbon(["DE", "FR", "GB"], now=NOW)

    assert [(r.zone, r.value, r.basis, r.valid_at.year) for r in readings] == [
        ("DE", 350.5, CarbonBasis.LIFECYCLE, 2023),
        ("FR", 20.0, CarbonBasis.DIRECT, 2022),
    ]
    assert isinstance(source, StaticCarbonSource)


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "line", "field", "message"),
    [
        (["DE,300,direct,2024,x,extra"], 2, None, "more fields"),
        (["DE,300,direct,2024"], 2, "source", "fewer fields"),
        (["de,300,direct,2024,x"], 2, "zone", "grid zone key"),
        ([",300,direct,2024,x"], 2, "zone", "grid zone key"),
        (["DE,3OO,direct,2024,x"], 2, "gco2_per_kwh", "expected a number"),
        (["DE,-1,direct,2024,x"], 2, "gco2_per_kwh", "finite number"),
        (["DE,nan,direct,2024,x"], 2, "gco2_per_kwh", "finite number"),
        (["DE,inf,direct,2024,x"], 2, "gco2_per_kwh", "finite number"),
        (["DE,300,marginal,2024,x"], 2, "basis", "lifecycle or direct"),
        (["DE,300,Direct,2024,x"], 2, "basis", "lifecycle or direct"),
        (["DE,300,direct,20x4,x"], 2, "year", "expected a year"),
        (["DE,300,direct,1850,x"], 2, "year", "within 1990-2100"),
        (["DE,300,direct,2024,"], 2, "source", "where the number comes from"),
        (
            ["DE,300,direct,2024,x", "FR,20,direct,2024,y", "DE,310,direct,2024,z"],
            4,
            "zone",
            "twice",
        ),
        ([], 1, None, "empty"),
    ],
)
def test_an_invalid_table_is_a_catalog_error_naming_file_line_and_field(
    table: Callable[..., Path], lines: list[str], line: int, field: str | None, message: str
) -> None:
    path = table(*lines)

    with pytest.raises(CatalogError, match=message) as caught:
        build("static", {"file": str(path)}, timeout=1.0)

    error = caught.value
    assert (error.source, error.line, error.field) == (str(path), line, field)
    expected = f"{path}:{line}: {field}: " if field else f"{path}:{line}: "
    assert str(error).startswith(expected)


@pytest.mark.parametrize(
    "header",
    ["zone,gco2_per_kwh,basis,year", "zone,value,basis,year,source", "", "zone;gco2_per_kwh"],
)
def test_a_wrong_header_is_a_catalog_error_on_line_1(
    table: Callable[..., Path], header: str
) -> None:
    path = table("DE,300,direct,2024,x", header=header)

    with pytest.raises(CatalogError, match="header must be zone,gco2_per_kwh,basis,year,source"):
        build("static", {"file": str(path)}, timeout=1.0)


def test_an_unreadable_file_is_a_config_error_naming_the_option(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"

    with pytest.raises(ConfigError, match="cannot read") as caught:
        build("static", {"file": str(missing)}, timeout=1.0)

    assert (caught.value.source, caught.value.key) == ("sources.static.options", "file")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADER.encode() + b"\nDE,300,direct,2024,M\xfcnchen\n")

    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        build("static", {"file": str(path)}, timeout=1.0)

    assert caught.value.key == "file"


@pytest.mark.parametrize(("options", "key"), [({"path": "x.csv"}, "path"), ({"file": 3}, "file")])
def test_bad_options_are_a_config_error_naming_the_key(
    options: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build("static", options, timeout=1.0)

    assert (caught.value.source, caught.value.key) == ("sources.static.options", key)


def test_an_unknown_option_error_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown option; known: file"):
        build("static", {"year": 2024}, timeout=1.0)
