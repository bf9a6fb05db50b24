"""Regions, the jurisdictions they sit in, and the catalog that answers
"may this data be processed there?".

The catalog is the only source of a region's country. A region that is not in it has
an unknown jurisdiction, and every sovereignty question about it answers *no*: arbiter
fails closed.

Jurisdiction groups (``EU``, ``EEA``, ...) are named sets of ISO 3166-1 alpha-2 country
codes; a group may include other groups. They are data, maintained in
``arbiter/data/jurisdictions.toml`` and extendable by operators (see
``docs/regions.md``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator

from arbiter.domain.market import Provider
from arbiter.domain.values import Value
from arbiter.errors import CatalogError

CountryCode = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]

EARTH_RADIUS_KM = 6371.0088


class Region(Value):
    """A public cloud region and where it physically is."""

    provider: Provider
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")]
    name: Annotated[str, Field(min_length=1)]
    country: CountryCode
    city: Annotated[str, Field(min_length=1)]
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    grid_zone: Annotated[str, Field(pattern=r"^[A-Z]{2}(-[A-Z0-9]+)*$")]
    groups: frozenset[str] = frozenset()
    """Jurisdiction groups the region's country belongs to (``EU``, ``EEA``, ...)."""

    @field_validator("latitude", "longitude")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def key(self) -> str:
        """``provider:region``, e.g. ``aws:eu-central-1``: how policies name regions."""
        return f"{self.provider}:{self.id}"

    @property
    def jurisdictions(self) -> frozenset[str]:
        """Everything a sovereignty rule may name that this region satisfies."""
        return self.groups | {self.country}


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance between two points, in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class Jurisdictions:
    """Named groups of countries. Immutable once built."""

    def __init__(self, groups: Mapping[str, frozenset[str]], descriptions: Mapping[str, str]):
        self._groups = dict(groups)
        self._descriptions = dict(descriptions)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._groups))

    def members(self, group: str) -> frozenset[str]:
        return self._groups[group]

    def description(self, group: str) -> str:
        return self._descriptions.get(group, "")

    def groups_of(self, country: str) -> frozenset[str]:
        return frozenset(name for name, members in self._groups.items() if country in members)


def parse_jurisdictions(
    tables: Sequence[tuple[str, Mapping[str, Any]]], *, known_countries: frozenset[str]
) -> Jurisdictions:
    """Build jurisdiction groups from parsed TOML documents, later ones extending earlier.

    Each document has ``[groups.NAME]`` tables with ``countries`` (ISO alpha-2 codes),
    optional ``includes`` (other group names) and ``description``. A later document may
    add a new group or add countries to an existing one; it can never remove any.
    Errors name the document and the offending key.
    """
    countries: dict[str, set[str]] = {}
    includes: dict[str, list[tuple[str, str]]] = {}  # group → [(included group, source)]
    descriptions: dict[str, str] = {}
    for source, doc in tables:
        unknown_top = set(doc) - {"groups"}
        if unknown_top:
            raise CatalogError(
                f"unknown key(s) {sorted(unknown_top)}; expected only [groups.NAME] tables",
                source=source,
                field=min(unknown_top),
            )
        groups = doc.get("groups", {})
        if not isinstance(groups, Mapping):
            raise CatalogError("must be a table of groups", source=source, field="groups")
        for name, spec in groups.items():
            field = f"groups.{name}"
            try:
                _check_group_name(name, known_countries)
            except ValueError as exc:
                raise CatalogError(str(exc), source=source, field=field) from None
            if not isinstance(spec, Mapping):
                raise CatalogError("must be a table", source=source, field=field)
            extra = set(spec) - {"countries", "includes", "description", "source"}
            if extra:
                raise CatalogError(
                    f"unknown key(s) {sorted(extra)}; expected countries, includes, "
                    "description, source",
                    source=source,
                    field=f"{field}.{min(extra)}",
                )
            members = spec.get("countries", [])
            if not isinstance(members, list) or not all(isinstance(c, str) for c in members):
                raise CatalogError(
                    "must be a list of ISO 3166-1 alpha-2 codes",
                    source=source,
                    field=f"{field}.countries",
                )
            for code in members:
                if code not in known_countries:
                    raise CatalogError(
                        f"unknown ISO 3166-1 alpha-2 country code {code!r}",
                        source=source,
                        field=f"{field}.countries",
                    )
            inc = spec.get("includes", [])
            if not isinstance(inc, list) or not all(isinstance(g, str) for g in inc):
                raise CatalogError(
                    "must be a list of group names", source=source, field=f"{field}.includes"
                )
            for key in ("description", "source"):
                if not isinstance(spec.get(key, ""), str):
                    raise CatalogError("must be a string", source=source, field=f"{field}.{key}")
            countries.setdefault(name, set()).update(members)
            includes.setdefault(name, []).extend((group, source) for group in inc)
            if "description" in spec:
                descriptions[name] = spec["description"]

    resolved: dict[str, frozenset[str]] = {}

    def resolve(name: str, trail: tuple[tuple[str, str], ...]) -> frozenset[str]:
        """``trail``: the (group, source of its include) edges that led to ``name``."""
        if trail:
            group, source = trail[-1]
            if name not in countries:
                raise CatalogError(
                    f"includes unknown group {name!r}; known: {', '.join(sorted(countries))}",
                    source=source,
                    field=f"groups.{group}.includes",
                )
            names = [g for g, _ in trail]
            if name in names:
                cycle = " -> ".join((*names[names.index(name) :], name))
                raise CatalogError(
                    f"groups include each other in a cycle: {cycle}",
                    source=source,
                    field=f"groups.{group}.includes",
                )
        if name not in resolved:
            members = set(countries[name])
            for included, source in includes.get(name, []):
                members |= resolve(included, (*trail, (name, source)))
            resolved[name] = frozenset(members)
        return resolved[name]

    for name in list(countries):
        resolve(name, ())
    return Jurisdictions(resolved, descriptions)


def _check_group_name(name: str, known_countries: frozenset[str]) -> None:
    if not re.fullmatch(r"[A-Z][A-Z0-9_-]{1,31}", name):
        raise ValueError(f"group name {name!r} must be 2-32 upper-case letters, digits, '_' or '-'")
    if name in known_countries:
        raise ValueError(f"group name {name!r} is an ISO 3166-1 country code; pick another")


CATALOG_COLUMNS = (
    "provider",
    "region",
    "name",
    "country",
    "city",
    "latitude",
    "longitude",
    "grid_zone",
)


class RegionCatalog:
    """Every region arbiter knows, keyed by ``provider:region``. Immutable once built."""

    def __init__(self, regions: Iterable[Region], jurisdictions: Jurisdictions):
        self._by_key: dict[str, Region] = {}
        for region in regions:
            self._by_key[region.key] = region
        self.jurisdictions = jurisdictions

    def __iter__(self) -> Iterator[Region]:
        return iter(sorted(self._by_key.values(), key=lambda r: (r.provider, r.id)))

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def get(self, provider: str, region: str) -> Region | None:
        """The region, or None if the catalog does not know it (unknown jurisdiction)."""
        return self._by_key.get(f"{provider}:{region}")

    def by_key(self, key: str) -> Region | None:
        return self._by_key.get(key)

    def for_provider(self, provider: Provider | str) -> tuple[Region, ...]:
        return tuple(r for r in self if r.provider == provider)

    def is_within(self, provider: str, region: str, allowed: Iterable[str]) -> bool:
        """True only if the region is known and its country or one of its groups is allowed.

        Fails closed: an unknown region, or an empty ``allowed``, answers False.
        """
        found = self.get(provider, region)
        if found is None:
            return False
        return not found.jurisdictions.isdisjoint(allowed)


def build_catalog(
    rows: Iterable[tuple[int, Mapping[str, str]]],
    *,
    source: str,
    known_countries: frozenset[str],
    jurisdictions: Jurisdictions,
) -> RegionCatalog:
    """Validate catalog rows (``(line number, {column: text})``) into a catalog.

    Errors name ``source:line`` and the field: a malformed value, an unknown country
    code, a grid zone outside the region's country, or a duplicate region.
    """
    regions: list[Region] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        missing = [c for c in CATALOG_COLUMNS if not (row.get(c) or "").strip()]
        if missing:
            raise CatalogError("missing value", source=source, line=line, field=missing[0])
        country = row["country"].strip()
        if country not in known_countries:
            raise CatalogError(
                f"unknown ISO 3166-1 alpha-2 country code {country!r}",
                source=source,
                line=line,
                field="country",
            )
        zone = row["grid_zone"].strip()
        if zone.split("-", 1)[0] != country:
            raise CatalogError(
                f"grid zone {zone!r} is not in country {country!r}",
                source=source,
                line=line,
                field="grid_zone",
            )
        try:
            region = Region(
                provider=row["provider"],  # type: ignore[arg-type]
                id=row["region"],
                name=row["name"],
                country=country,
                city=row["city"],
                latitude=row["latitude"],  # type: ignore[arg-type]
                longitude=row["longitude"],  # type: ignore[arg-type]
                grid_zone=zone,
                groups=jurisdictions.groups_of(country),
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else None
            column = {"id": "region"}.get(field or "", field)
            raise CatalogError(
                f"{err['msg']} (got {err.get('input')!r})", source=source, line=line, field=column
            ) from None
        if region.key in first_line:
            raise CatalogError(
                f"duplicate region {region.key} (first on line {first_line[region.key]})",
                source=source,
                line=line,
                field="region",
            )
        first_line[region.key] = line
        regions.append(region)
    return RegionCatalog(regions, jurisdictions)
