"""Load the region catalog and jurisdiction groups shipped in ``arbiter/data``.

The shipped catalog is ``arbiter/data/regions.csv`` (provenance in
``arbiter/data/PROVENANCE.md``); operators may add jurisdiction groups with extra TOML
files (``catalog.jurisdictions_files`` in the config). Validation itself is pure and
lives in :mod:`arbiter.domain.regions`.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import json
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from arbiter.domain.regions import (
    CATALOG_COLUMNS,
    Jurisdictions,
    RegionCatalog,
    build_catalog,
    parse_jurisdictions,
)
from arbiter.errors import CatalogError

SHIPPED_REGIONS = "arbiter/data/regions.csv"
SHIPPED_JURISDICTIONS = "arbiter/data/jurisdictions.toml"


@functools.cache
def known_countries() -> frozenset[str]:
    """Every ISO 3166-1 alpha-2 code (from pycountry's copy of the standard).

    Read straight from pycountry's database file when it is where pycountry keeps it:
    importing pycountry (which reads its own version from the package metadata) and
    building its country objects costs more than every other step of loading the
    catalog, and ``arbiter status`` loads the catalog.
    """
    spec = importlib.util.find_spec("pycountry")
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        database = Path(folder) / "databases" / "iso3166-1.json"
        try:
            entries = json.loads(database.read_text(encoding="utf-8"))["3166-1"]
            return frozenset(str(entry["alpha_2"]) for entry in entries)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    import pycountry

    return frozenset(c.alpha_2 for c in pycountry.countries)


def _shipped_text(name: str) -> str:
    return resources.files("arbiter").joinpath("data", name).read_text(encoding="utf-8")


def csv_rows(text: str, *, source: str) -> Iterator[tuple[int, Mapping[str, str]]]:
    """Rows of a catalog CSV with their line numbers; the header must match exactly."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != CATALOG_COLUMNS:
        raise CatalogError(
            f"header must be {','.join(CATALOG_COLUMNS)}, got {','.join(reader.fieldnames or [])}",
            source=source,
            line=1,
        )
    for row in reader:
        if None in row:
            raise CatalogError(
                "more fields than the header has", source=source, line=reader.line_num
            )
        yield reader.line_num, row


def _parse_toml(text: str, *, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"not valid TOML: {exc}", source=source) from None


def load_jurisdictions(extra_files: Iterable[Path] = ()) -> Jurisdictions:
    docs = [
        (
            SHIPPED_JURISDICTIONS,
            _parse_toml(_shipped_text("jurisdictions.toml"), source=SHIPPED_JURISDICTIONS),
        )
    ]
    for path in extra_files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read: {exc.strerror}", source=str(path)) from None
        docs.append((str(path), _parse_toml(text, source=str(path))))
    return parse_jurisdictions(docs, known_countries=known_countries())


def load_catalog(
    *, regions_file: Path | None = None, jurisdictions_files: Iterable[Path] = ()
) -> RegionCatalog:
    """The region catalog: the shipped one, or ``regions_file`` in the same format."""
    if regions_file is None:
        source, text = SHIPPED_REGIONS, _shipped_text("regions.csv")
    else:
        source = str(regions_file)
        try:
            text = Path(regions_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read: {exc.strerror}", source=source) from None
    return build_catalog(
        csv_rows(text, source=source),
        source=source,
        known_countries=known_countries(),
        jurisdictions=load_jurisdictions(jurisdictions_files),
    )
