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
import os
import stat
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from arbiter import toml_lines
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
    lines_read = 0

    def lines() -> Iterator[str]:
        nonlocal lines_read
        for line in io.StringIO(text):
            lines_read += 1
            yield line

    reader = csv.DictReader(lines())
    if tuple(reader.fieldnames or ()) != CATALOG_COLUMNS:
        raise CatalogError(
            f"header must be {','.join(CATALOG_COLUMNS)}, got {','.join(reader.fieldnames or [])}",
            source=source,
            line=1,
        )
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # the line being read: the reader's own count can lag behind it
            raise CatalogError(f"not valid CSV: {exc}", source=source, line=lines_read) from None
        if None in row:
            raise CatalogError(
                "more fields than the header has", source=source, line=reader.line_num
            )
        yield reader.line_num, row


def _read_text(path: Path) -> str:
    """A catalog file's text; CatalogError naming the file (and the line of the first
    byte that is not UTF-8) when it cannot be read as text. A path that is not a
    regular file is refused unread (a FIFO would block the start, a device never end)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CatalogError("not a regular file", source=str(path))
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise CatalogError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        raise CatalogError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start - line_start + 1})",
            source=str(path),
            line=raw.count(b"\n", 0, exc.start) + 1,
        ) from None


def _parse_toml(text: str, *, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line, column = toml_lines.decode_error_position(str(exc))
        if line is None:
            line = toml_lines.last_line(text)
        elif column is not None:
            message = f"{message} (column {column})"
        raise CatalogError(f"not valid TOML: {message}", source=source, line=line) from None
    except RecursionError:
        raise CatalogError(
            "not valid TOML: nested too deeply", source=source, line=toml_lines.deepest_line(text)
        ) from None


def load_jurisdictions(extra_files: Iterable[Path] = ()) -> Jurisdictions:
    """The shipped jurisdiction groups, extended by ``extra_files`` in order. Any error
    is a CatalogError naming the file, and the line and key where they are known."""
    texts = [(SHIPPED_JURISDICTIONS, _shipped_text("jurisdictions.toml"))]
    texts += [(str(path), _read_text(path)) for path in extra_files]
    docs = [(source, _parse_toml(text, source=source)) for source, text in texts]
    try:
        return parse_jurisdictions(docs, known_countries=known_countries())
    except CatalogError as exc:
        text = dict(texts).get(exc.source)
        if text is None or exc.field is None or exc.line is not None:
            raise
        line = toml_lines.line_of(text, exc.field)
        raise CatalogError(exc.message, source=exc.source, line=line, field=exc.field) from None


def load_catalog(
    *, regions_file: Path | None = None, jurisdictions_files: Iterable[Path] = ()
) -> RegionCatalog:
    """The region catalog: the shipped one, or ``regions_file`` in the same format."""
    if regions_file is None:
        source, text = SHIPPED_REGIONS, _shipped_text("regions.csv")
    else:
        source, text = str(regions_file), _read_text(regions_file)
    return build_catalog(
        csv_rows(text, source=source),
        source=source,
        known_countries=known_countries(),
        jurisdictions=load_jurisdictions(jurisdictions_files),
    )
