"""The shipped region catalog: valid, complete, and right about where regions are,
checked against independent sources (botocore's region names, Cyclenerd's GCP region
list, Electricity Maps' data-centre list, Cloud Carbon Footprint's region-to-zone map,
Google's region-carbon-info), and, for the few regions none of them locates, against
a small table of documented facts. Every region's country and coordinates are checked
by at least one of these."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import botocore
import pytest

from arbiter.catalog import csv_rows, known_countries, load_catalog, load_jurisdictions
from arbiter.domain.regions import RegionCatalog, build_catalog, great_circle_km
from arbiter.errors import CatalogError

DATA = Path(__file__).parent / "data"
HEADER = "provider,region,name,country,city,latitude,longitude,grid_zone\n"

# Regions that none of the sources in tests/data locates (too new for them, or
# restricted), with where the provider says they are. `city` is the provider's own
# statement; country and coordinates are those of that city (city centre, to 0.01°,
# or the provider's published coordinates where it publishes them). Sources:
#   AWS    "Regions and Availability Zones" (ap-east-2 = "Asia Pacific (Taipei)"),
#          https://docs.aws.amazon.com/global-infrastructure/latest/regions/aws-regions.html;
#          botocore's description, checked below.
#   Azure  Microsoft Learn "Azure regions list", column "Physical location",
#          https://learn.microsoft.com/azure/reliability/regions-list. For jioindiacentral,
#          jioindiawest and westindia also Azure Resource Manager's location metadata
#          (`az account list-locations`: physicalLocation, latitude, longitude), whose
#          coordinates are used. The region ids name the country, checked below.
#   GCP    us-central2 is Google's Mayes County data centre in Pryor, Oklahoma,
#          https://www.google.com/about/datacenters/locations/mayes-county/; Google's
#          region-carbon-info and Cloud Carbon Footprint place it in the US (below).
LOCATED_BY_HAND: dict[str, tuple[str, str, float, float]] = {
    # key: (city, country, latitude, longitude)
    "aws:ap-east-2": ("Taipei", "TW", 25.03, 121.57),
    "azure:austriaeast": ("Vienna", "AT", 48.21, 16.37),
    "azure:belgiumcentral": ("Brussels", "BE", 50.85, 4.35),
    "azure:chilecentral": ("Santiago", "CL", -33.45, -70.67),
    "azure:denmarkeast": ("Copenhagen", "DK", 55.68, 12.57),
    "azure:indiasouthcentral": ("Hyderabad", "IN", 17.39, 78.49),
    "azure:jioindiacentral": ("Nagpur", "IN", 21.146633, 79.08886),
    "azure:jioindiawest": ("Jamnagar", "IN", 22.470701, 70.05773),
    "azure:malaysiawest": ("Kuala Lumpur", "MY", 3.14, 101.69),
    "azure:swedensouth": ("Malmö", "SE", 55.61, 13.00),
    "azure:taiwannorth": ("Taipei", "TW", 25.03, 121.57),
    "azure:westindia": ("Mumbai", "IN", 19.088, 72.868),
    "gcp:us-central2": ("Pryor", "US", 36.31, -95.32),
}

# Excerpts of two Apache-2.0 sources that are not in tests/data, pinned here so these
# checks always run; test_pinned_excerpts_match_the_shared_data compares them with the
# project's shared data collection when it is checked out.
#   Cloud Carbon Footprint @ b7a049c7 (shared cloud_region_emission_factors_ccf.csv):
#   (cloud, region, grid factor in gCO2e/kWh, Electricity Maps zone or "")
CCF_ROWS = (
    ("azure", "centralindia", "708.2", "IN-WE"),
    ("azure", "southindia", "708.2", "IN-SO"),
    ("azure", "westindia", "708.2", "IN-WE"),
    ("azure", "jioindiacentral", "708.2", ""),
    ("azure", "jioindiawest", "708.2", ""),
    ("gcp", "us-central2", "456", "US-MIDW-MISO"),
)
#   GoogleCloudPlatform/region-carbon-info @ 49f3f26b, data/yearly/2024.csv (shared
#   gcp_region_carbon_yearly.csv): region -> location as Google names it
GOOGLE_LOCATIONS = {"us-central2": "Oklahoma"}


@pytest.fixture(scope="module")
def catalog() -> RegionCatalog:
    return load_catalog()


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _csv(name: str) -> list[dict[str, str]]:
    return _read(DATA / name)


def _shared_data() -> Path | None:
    """The project's shared public-data collection, when it is checked out next to
    the repository (it is not part of the repository)."""
    root = Path(__file__).resolve().parents[1]
    for candidate in (root.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    return None


def _botocore_aws_regions() -> dict[str, str]:
    """Region id -> description, from the installed botocore's endpoints.json."""
    endpoints = json.loads((Path(botocore.__file__).parent / "data" / "endpoints.json").read_text())
    (aws,) = [p for p in endpoints["partitions"] if p["partition"] == "aws"]
    return {name: r["description"] for name, r in aws["regions"].items()}


def test_every_public_aws_region_in_botocore_is_in_the_catalog(catalog: RegionCatalog) -> None:
    botocore_regions = _botocore_aws_regions()
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


def test_countries_agree_with_cloud_carbon_footprint_zones(catalog: RegionCatalog) -> None:
    shared = _shared_data()
    if shared is None:
        pytest.skip("the shared data collection is not checked out")
    disagree = []
    for row in _read(shared / "cloud_region_emission_factors_ccf.csv"):
        region = catalog.get(row["cloud"], row["region"])
        zone = row["ccf_electricitymaps_zone"]
        if region is not None and zone and zone.split("-")[0] != region.country:
            disagree.append((region.key, region.country, zone))
    assert disagree == []


# -- regions none of the sources above locates -------------------------------------


@pytest.mark.parametrize("key", sorted(LOCATED_BY_HAND))
def test_a_region_no_source_locates_matches_the_documented_facts(
    catalog: RegionCatalog, key: str
) -> None:
    city, country, lat, lon = LOCATED_BY_HAND[key]
    region = catalog.by_key(key)
    assert region is not None, f"{key} is documented here but not in the catalog"
    assert (region.city, region.country) == (city, country)
    assert great_circle_km(lat, lon, region.latitude, region.longitude) < 50


def test_botocore_names_the_city_of_the_aws_regions_located_by_hand() -> None:
    descriptions = _botocore_aws_regions()
    for key, (city, *_) in LOCATED_BY_HAND.items():
        provider, region = key.split(":")
        if provider == "aws":
            assert descriptions[region].endswith(f"({city})"), key


def test_azure_region_ids_name_the_country_of_the_regions_located_by_hand() -> None:
    import pycountry

    for key, (_, country, *_) in LOCATED_BY_HAND.items():
        provider, region = key.split(":")
        if provider == "azure":
            found = pycountry.countries.get(alpha_2=country)
            assert found is not None
            name = getattr(found, "common_name", found.name)
            assert name.lower().replace(" ", "") in region, (key, name)


def test_cloud_carbon_footprint_gives_the_india_regions_indias_grid_factor(
    catalog: RegionCatalog,
) -> None:
    # CCF prices Azure regions outside the US at their country's grid factor. It maps
    # westindia to an Indian zone and gives the Jio regions, which it does not map,
    # the factor of the regions it maps to Indian zones.
    india = {row[2] for row in CCF_ROWS if row[3].startswith("IN-")}
    assert len(india) == 1
    for cloud, name, factor, zone in CCF_ROWS:
        region = catalog.get(cloud, name)
        assert region is not None
        if factor in india:
            assert region.country == "IN", region.key
            assert zone == "" or zone.split("-")[0] == "IN"


def test_google_and_cloud_carbon_footprint_place_us_central2_in_the_us(
    catalog: RegionCatalog,
) -> None:
    import pycountry

    region = catalog.get("gcp", "us-central2")
    assert region is not None
    state = pycountry.subdivisions.lookup(GOOGLE_LOCATIONS["us-central2"])
    assert (state.code, state.country_code) == ("US-OK", region.country)
    # CCF maps it to MISO; Pryor is served by the Grand River Dam Authority, a member
    # of SPP, so only the country is compared.
    (zone,) = [z for c, r, _, z in CCF_ROWS if (c, r) == ("gcp", "us-central2")]
    assert zone.split("-")[0] == region.country


def test_pinned_excerpts_match_the_shared_data() -> None:
    shared = _shared_data()
    if shared is None:
        pytest.skip("the shared data collection is not checked out")
    ccf = {
        (r["cloud"], r["region"], r["emission_factor_gco2e_per_kwh"], r["ccf_electricitymaps_zone"])
        for r in _read(shared / "cloud_region_emission_factors_ccf.csv")
    }
    assert set(CCF_ROWS) <= ccf
    google = {
        r["gcp_region"]: r["location"]
        for r in _read(shared / "gcp_region_carbon_yearly.csv")
        if r["year"] == "2024"
    }
    assert {region: google[region] for region in GOOGLE_LOCATIONS} == GOOGLE_LOCATIONS


def test_every_region_has_its_country_and_location_checked(catalog: RegionCatalog) -> None:
    electricity_maps = {
        f"{row['cloud']}:{row['region']}": row
        for row in _csv("cloud_region_locations_electricitymaps.csv")
    }
    located = (
        set(electricity_maps)
        | {f"gcp:{row['gcp_region']}" for row in _csv("gcp_regions_cyclenerd.csv")}
        | set(LOCATED_BY_HAND)
    )
    country_checked = {
        key for key, row in electricity_maps.items() if row["electricitymaps_zone"]
    } | set(LOCATED_BY_HAND)
    unchecked = [r.key for r in catalog if r.key not in located or r.key not in country_checked]
    assert unchecked == []


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


def test_the_known_countries_are_pycountrys_iso_3166_1() -> None:
    import pycountry

    # read from pycountry's database file, without importing pycountry (start-up time)
    assert known_countries() == frozenset(c.alpha_2 for c in pycountry.countries)
    assert {"DE", "IE", "US", "ZA"} <= known_countries()


# -- bad operator files: one line naming file, line and field, never a traceback -------

MINE = '[groups.MINE]\ncountries = ["DE"]\n'


@pytest.mark.parametrize(
    ("content", "line", "field", "message"),
    [
        # not text
        (b'[groups.MINE]\ncountries = ["DE", "\xffAT"]\n', 2, None, "not UTF-8 text (byte 0xff"),
        (b"\xef\xbb\xbf\xfe" + MINE.encode(), 1, None, "not UTF-8"),
        # not TOML
        ('[groups.MINE]\ncountries = ["DE"]\nincludes = \n', 3, None, "not valid TOML"),
        ('[groups.MINE]\ncountries = ["DE"\n', 2, None, "Unclosed array"),
        ("[groups.MINE\n", 1, None, "not valid TOML"),
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", 1, None, "nested too deeply"),
        # wrong types
        ('[groups.MINE]\ncountries = "DE"\n', 2, "groups.MINE.countries", "must be a list"),
        ('[groups.MINE]\ncountries = [["DE"]]\n', 2, "groups.MINE.countries", "must be a list"),
        ('[groups.MINE]\ncountries = ["DE"]\nincludes = [1]\n', 3, "groups.MINE.includes", ""),
        (MINE + "description = 3\n", 3, "groups.MINE.description", "must be a string"),
        (MINE + "source = [1]\n", 3, "groups.MINE.source", "must be a string"),
        ("groups = 3\n", 1, "groups", "must be a table of groups"),
        ("# mine\n[groups]\nMINE = 3\n", 3, "groups.MINE", "must be a table"),
        ('[[groups.MINE]]\ncountries = ["DE"]\n', 1, "groups.MINE", "must be a table"),
        # nested tables
        (MINE + '[groups.MINE.extra]\ncountries = ["AT"]\n', 3, "groups.MINE.extra", "unknown"),
        ("[groups.MINE.countries]\nDE = true\n", 1, "groups.MINE.countries", "must be a list"),
        ("[groups.MINE]\nincludes = { EU = true }\n", 2, "groups.MINE.includes", "must be a list"),
        # unknown keys
        (MINE + 'colour = "blue"\n', 3, "groups.MINE.colour", "unknown key(s) ['colour']"),
        ("version = 2\n" + MINE, 1, "version", "unknown key(s) ['version']"),
        # bad values, found where they are written
        ('groups.MINE.countries = ["ZZ"]\n', 1, "groups.MINE.countries", "'ZZ'"),
        (
            '[groups.MINE]\ndescription = """\ncountries = nope\n"""\ncountries = ["ZZ"]\n',
            5,
            "groups.MINE.countries",
            "'ZZ'",
        ),
        (
            '[groups.MINE]\ncountries = [\n  "DE",\n]\nincludes = ["NOPE"]\n',
            5,
            "groups.MINE.includes",
            "includes unknown group 'NOPE'",
        ),
        ('[groups."mine"]\ncountries = ["DE"]\n', 1, "groups.mine", "upper-case"),
        (
            '[groups.A1]\nincludes = ["B1"]\n\n[groups.B1]\nincludes = ["A1"]\n',
            5,
            "groups.B1.includes",
            "cycle: A1 -> B1 -> A1",
        ),
    ],
)
def test_a_bad_jurisdictions_file_is_one_line_naming_its_file_line_and_field(
    tmp_path: Path, content: str | bytes, line: int, field: str | None, message: str
) -> None:
    extra = tmp_path / "mine.toml"
    if isinstance(content, bytes):
        extra.write_bytes(content)
    else:
        extra.write_text(content)
    with pytest.raises(CatalogError) as err:
        load_jurisdictions([extra])
    text = str(err.value)
    assert (err.value.source, err.value.line) == (str(extra), line), text
    if field is not None:
        assert err.value.field == field, text
    assert text.startswith(f"{extra}:{line}: {field + ': ' if field else ''}"), text
    assert message in text
    assert "\n" not in text


def test_an_include_of_an_unknown_group_names_the_file_that_includes_it(tmp_path: Path) -> None:
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text(MINE)
    second.write_text('# theirs\n[groups.THEIRS]\nincludes = ["MINE", "NOPE"]\n')
    with pytest.raises(CatalogError) as err:
        load_jurisdictions([first, second])
    assert str(err.value).startswith(f"{second}:3: groups.THEIRS.includes: includes unknown")


def test_a_regions_file_that_is_not_utf8_is_an_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "regions.csv"
    path.write_bytes(
        (HEADER + GOOD).encode() + b"aws,eu-west-1,Ireland,IE,Dubl\xefn,53.3,-6.2,IE\n"
    )
    with pytest.raises(CatalogError) as err:
        load_catalog(regions_file=path)
    assert str(err.value) == f"{path}:3: not UTF-8 text (byte 0xef at column 30)"


def test_a_regions_file_too_odd_for_the_csv_reader_is_an_error_naming_its_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "regions.csv"
    path.write_text(
        HEADER + GOOD + 'aws,eu-west-1,"' + "x" * 200_000 + '",IE,Dublin,53.3,-6.2,IE\n'
    )
    with pytest.raises(CatalogError) as err:
        load_catalog(regions_file=path)
    assert str(err.value).startswith(f"{path}:3: not valid CSV: field larger than field limit")


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_catalog_path_that_is_not_a_regular_file_is_refused_without_reading_it(
    tmp_path: Path, kind: str
) -> None:
    path = {"fifo": tmp_path / "pipe.toml", "device": Path("/dev/zero"), "directory": tmp_path}[
        kind
    ]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(CatalogError, match="not a regular file") as err:
        load_jurisdictions([path])
    assert err.value.source == str(path)
    with pytest.raises(CatalogError, match="not a regular file"):
        load_catalog(regions_file=path)


@pytest.mark.parametrize("command", [["regions"], ["run"]])
def test_the_cli_refuses_a_bad_jurisdictions_file_with_one_line_before_it_starts(
    tmp_path: Path, command: list[str]
) -> None:
    from click.testing import CliRunner

    from arbiter.cli.main import cli

    extra = tmp_path / "mine.toml"
    extra.write_bytes(b'[groups.MINE]\ncountries = ["D\xc3"]\n')
    config = tmp_path / "config.toml"
    config.write_text(f"[catalog]\njurisdictions_files = [{str(extra)!r}]\n")
    database = tmp_path / "arbiter.db"
    result = CliRunner().invoke(
        cli, ["--config", str(config), "--database-url", f"sqlite:///{database}", *command]
    )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [f"arbiter: error: {extra}:2: not UTF-8 text (byte 0xc3 at column 16)"]
    assert "Traceback" not in result.output
    assert not database.exists(), "nothing was started"
