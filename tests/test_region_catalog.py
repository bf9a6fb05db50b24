"""The shipped region catalog: valid, complete, and right about where regions are,
checked against independent sources (botocore's region names, Cyclenerd's GCP region
list, Electricity Maps' data-centre list)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import botocore
import pytest

from arbiter.catalog import csv_rows, known_countries, load_catalog, load_jurisdictions
from arbiter.domain.regions import RegionCatalog, build_catalog, great_circle_km
from arbiter.errors import CatalogError

DATA = Path(__file__).parent / "data"
HEADER = "provider,region,name,country,city,latitude,longitude,grid_zone\n"


@pytest.fixture(scope="module")
def catalog() -> RegionCatalog:
    return load_catalog()


def _csv(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_public_aws_region_in_botocore_is_in_the_catalog(catalog: RegionCatalog) -> None:
    endpoints = json.loads((Path(botocore.__file__).parent / "data" / "endpoints.json").read_text())
    (aws,) = [p for p in endpoints["partitions"] if p["partition"] == "aws"]
    botocore_regions = {name: r["description"] for name, r in aws["regions"].items()}
    ours = {r.id: r for r in catalog.for_provider("aws")}
    assert set(ours) == set(botocore_regions)
    for region_id, description in botocore_regions.items():
        assert ours[region_id].name == description


def test_aws_region_names_match_the_recorded_botocore_list(catalog: RegionCatalog) -> None:
    recorded = {
        row["region"]: row["description"]
        for row in _csv("aws_regions_botocore.csv")
        if row["partition"] == "aws"
    }
    for region_id, description in recorded.items():
        region = catalog.get("aws", region_id)
        assert region is not None, region_id
        assert region.name == description


def test_every_gcp_region_in_cyclenerd_is_within_300_km(catalog: RegionCatalog) -> None:
    for row in _csv("gcp_regions_cyclenerd.csv"):
        region = catalog.get("gcp", row["gcp_region"])
        assert region is not None, row["gcp_region"]
        lat, lon = float(row["latitude_as_published"]), float(row["longitude_as_published"])
        if row["gcp_region"] == "africa-south1":
            # The source publishes Johannesburg in the northern hemisphere; it is not.
            assert lat > 0 and region.latitude < 0
            lat = -lat
        assert great_circle_km(lat, lon, region.latitude, region.longitude) < 300, row


def test_cyclenerd_johannesburg_error_is_not_copied(catalog: RegionCatalog) -> None:
    johannesburg = catalog.get("gcp", "africa-south1")
    assert johannesburg is not None
    assert johannesburg.country == "ZA"
    assert -27 < johannesburg.latitude < -25


def test_regions_are_within_400_km_of_electricity_maps_data_centres(
    catalog: RegionCatalog,
) -> None:
    far = []
    for row in _csv("cloud_region_locations_electricitymaps.csv"):
        region = catalog.get(row["cloud"], row["region"])
        if region is None:
            continue
        km = great_circle_km(
            float(row["latitude"]), float(row["longitude"]), region.latitude, region.longitude
        )
        if km > 400:
            far.append((region.key, round(km)))
    assert far == []


def test_countries_agree_with_electricity_maps_zones(catalog: RegionCatalog) -> None:
    disagree = []
    for row in _csv("cloud_region_locations_electricitymaps.csv"):
        region = catalog.get(row["cloud"], row["region"])
        if region is None or not row["electricitymaps_zone"]:
            continue
        if row["electricitymaps_zone"].split("-")[0] != region.country:
            disagree.append((region.key, region.country, row["electricitymaps_zone"]))
    assert disagree == []


def test_catalog_covers_every_region_in_electricity_maps_list(catalog: RegionCatalog) -> None:
    not_public = ("cn-", "china", "usgov", "us-gov")
    missing = [
        f"{row['cloud']}:{row['region']}"
        for row in _csv("cloud_region_locations_electricitymaps.csv")
        if not row["region"].startswith(not_public)
        and "euap" not in row["region"]
        and catalog.get(row["cloud"], row["region"]) is None
    ]
    assert missing == []


def test_catalog_has_every_provider(catalog: RegionCatalog) -> None:
    counts = {p: len(catalog.for_provider(p)) for p in ("aws", "gcp", "azure")}
    assert counts["aws"] >= 30 and counts["gcp"] >= 40 and counts["azure"] >= 55


def test_eu_regions_carry_the_eu_and_eea_groups(catalog: RegionCatalog) -> None:
    frankfurt = catalog.get("aws", "eu-central-1")
    oslo = catalog.get("azure", "norwayeast")
    zurich = catalog.get("gcp", "europe-west6")
    virginia = catalog.get("aws", "us-east-1")
    assert frankfurt and oslo and zurich and virginia
    assert {"EU", "EEA"} <= frankfurt.groups
    assert "EEA" in oslo.groups and "EU" not in oslo.groups
    assert zurich.country == "CH" and "EEA" not in zurich.groups
    assert virginia.groups == frozenset()


def test_an_unknown_region_is_never_within_any_jurisdiction(catalog: RegionCatalog) -> None:
    assert catalog.is_within("aws", "eu-central-1", {"EU"})
    assert not catalog.is_within("aws", "eu-moon-1", {"EU", "EEA", "US", "DE"})
    assert not catalog.is_within("awz", "eu-central-1", {"EU"})


def test_a_region_may_be_allowed_by_country_code(catalog: RegionCatalog) -> None:
    assert catalog.is_within("azure", "germanywestcentral", {"DE"})
    assert not catalog.is_within("azure", "germanywestcentral", {"FR"})
    assert not catalog.is_within("azure", "germanywestcentral", set())


# -- validation of catalog files ------------------------------------------------


def _build(text: str) -> RegionCatalog:
    return build_catalog(
        csv_rows(text, source="regions.csv"),
        source="regions.csv",
        known_countries=known_countries(),
        jurisdictions=load_jurisdictions(),
    )


GOOD = "aws,eu-central-1,Europe (Frankfurt),DE,Frankfurt,50.1109,8.6821,DE\n"


def test_a_valid_file_builds(tmp_path: Path) -> None:
    assert len(_build(HEADER + GOOD)) == 1


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ("aws,eu-central-1,Frankfurt,XX,Frankfurt,50.1,8.6,XX", "country", "unknown ISO"),
        ("aws,eu-central-1,Frankfurt,DE,Frankfurt,150.1,8.6,DE", "latitude", "less than"),
        ("aws,eu-central-1,Frankfurt,DE,Frankfurt,50.1,8.6e3,DE", "longitude", "less than"),
        ("aws,eu-central-1,Frankfurt,DE,Frankfurt,north,8.6,DE", "latitude", "number"),
        ("aws,eu-central-1,Frankfurt,DE,Frankfurt,50.1,8.6,FR", "grid_zone", "not in country"),
        ("awz,eu-central-1,Frankfurt,DE,Frankfurt,50.1,8.6,DE", "provider", "aws"),
        ("aws,,Frankfurt,DE,Frankfurt,50.1,8.6,DE", "region", "missing"),
    ],
)
def test_a_bad_row_is_an_error_naming_line_and_field(row: str, field: str, message: str) -> None:
    with pytest.raises(CatalogError) as err:
        _build(HEADER + GOOD + row + "\n")
    assert err.value.line == 3
    assert err.value.field == field
    assert message in str(err.value)
    assert str(err.value).startswith(f"regions.csv:3: {field}: ")


def test_a_duplicate_region_is_an_error() -> None:
    with pytest.raises(
        CatalogError, match=r"regions.csv:3: region: duplicate region aws:eu-central-1"
    ):
        _build(HEADER + GOOD + GOOD)


def test_a_wrong_header_is_an_error() -> None:
    with pytest.raises(CatalogError, match="header must be"):
        _build("provider,region\naws,eu-central-1\n")


def test_a_custom_regions_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "regions.csv"
    path.write_text(HEADER + GOOD)
    catalog = load_catalog(regions_file=path)
    assert [r.key for r in catalog] == ["aws:eu-central-1"]


def test_a_missing_regions_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"nope\.csv: cannot read"):
        load_catalog(regions_file=tmp_path / "nope.csv")


# -- jurisdiction groups --------------------------------------------------------


def test_the_eea_includes_the_eu() -> None:
    juris = load_jurisdictions()
    assert juris.members("EU") < juris.members("EEA")
    assert juris.members("EEA") - juris.members("EU") == {"IS", "LI", "NO"}
    assert len(juris.members("EU")) == 27


def test_operators_can_add_a_group(tmp_path: Path) -> None:
    extra = tmp_path / "mine.toml"
    extra.write_text('[groups.DACH]\ncountries = ["DE", "AT", "CH"]\n')
    juris = load_jurisdictions([extra])
    assert juris.members("DACH") == {"DE", "AT", "CH"}
    assert juris.groups_of("CH") >= {"DACH", "EFTA"}


def test_an_added_group_may_include_a_shipped_one(tmp_path: Path) -> None:
    extra = tmp_path / "mine.toml"
    extra.write_text('[groups.EEA-CH]\nincludes = ["EEA"]\ncountries = ["CH"]\n')
    juris = load_jurisdictions([extra])
    assert "CH" in juris.members("EEA-CH") and "DE" in juris.members("EEA-CH")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[groups.eu-ish]\ncountries = ["DE"]\n', "upper-case"),
        ('[groups.DE]\ncountries = ["AT"]\n', "is an ISO 3166-1 country code"),
        ('[groups.MINE]\ncountries = ["ZZ"]\n', "unknown ISO 3166-1 alpha-2 country code 'ZZ'"),
        ('[groups.MINE]\nincludes = ["NOPE"]\n', "includes unknown group 'NOPE'"),
        ('[groups.MINE]\ncountry = ["DE"]\n', "unknown key(s) ['country']"),
        ('[groups.A1]\nincludes = ["B1"]\n[groups.B1]\nincludes = ["A1"]\n', "cycle"),
        ("[groups.MINE\n", "not valid TOML"),
    ],
)
def test_a_bad_jurisdictions_file_is_an_error_naming_it(
    tmp_path: Path, text: str, message: str
) -> None:
    extra = tmp_path / "mine.toml"
    extra.write_text(text)
    with pytest.raises(CatalogError) as err:
        load_jurisdictions([extra])
    assert message in str(err.value)
    assert "mine.toml" in str(err.value)
