"""Change-point encoding: a series keeps one row per value level, with the time the
level was first and last seen.

For each observation, in time order per series: the same value as the newest row moves
that row's ``last_seen``; a different value starts a new row; an observation older
than the newest row's ``last_seen`` is ignored (history is never rewritten).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Table,
    and_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

_CHUNK = 5000
_UPDATE_CHUNK = 5000


def member_of(conn: Connection, column: Column[Any], values: Sequence[Any]) -> Any:
    """``column IN values``: one array parameter on PostgreSQL (no per-value binds to
    render and parse), an expanding IN elsewhere."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


@dataclass(frozen=True)
class IngestStats:
    """What a batch of observations did to a change-point table."""

    inserted: int = 0
    """New change points (first sighting of a series, or a changed value)."""
    extended: int = 0
    """Unchanged values: only ``last_seen`` moved."""
    ignored: int = 0
    """Observations older than what the store already has for that series."""

    def __add__(self, other: IngestStats) -> IngestStats:
        return IngestStats(
            self.inserted + other.inserted,
            self.extended + other.extended,
            self.ignored + other.ignored,
        )


@dataclass(frozen=True)
class Observation:
    series: tuple[Hashable, ...]
    """Values of the table's series columns, in order."""
    value: float
    at: datetime


def record(
    conn: Connection,
    table: Table,
    series_columns: Sequence[str],
    value_column: str,
    observations: Sequence[Observation],
    describe: Mapping[tuple[Hashable, ...], Mapping[str, Any]] | None = None,
) -> IngestStats:
    """Write observations to a change-point table inside the caller's transaction.

    ``describe`` gives, per series, the other columns a new row needs.
    """
    if not observations:
        return IngestStats()
    ordered = sorted(observations, key=lambda o: o.at)
    cols: list[Column[Any]] = [table.c[name] for name in series_columns]
    value_col = table.c[value_column]
    newest: dict[tuple[Hashable, ...], dict[str, Any]] = {}
    wanted = {o.series for o in ordered}
    # The newest level of each series: a GROUP BY on the (series..., first_seen) index,
    # restricted by the first series column, joined back to its row.
    heads = sorted({s[0] for s in wanted}, key=repr)
    for start in range(0, len(heads), _CHUNK):
        chunk = heads[start : start + _CHUNK]
        latest_first = (
            select(*cols, func.max(table.c.first_seen).label("fs"))
            .where(member_of(conn, cols[0], chunk))
            .group_by(*cols)
            .subquery()
        )
        rows = conn.execute(
            select(table.c.id, *cols, value_col, table.c.last_seen).join(
                latest_first,
                and_(
                    *(c == latest_first.c[c.name] for c in cols),
                    table.c.first_seen == latest_first.c.fs,
                ),
            )
        )
        n = len(cols)
        for row in rows.all():
            series = tuple(row[1 : 1 + n])
            if series in wanted:
                newest[series] = {
                    "id": row[0],
                    "value": row[1 + n],
                    "last_seen": row[2 + n],
                    "row": None,
                }
    new_rows: list[dict[str, Any]] = []
    moved: dict[int, datetime] = {}
    inserted = extended = ignored = 0
    for obs in ordered:
        current = newest.get(obs.series)
        if current is not None and obs.at < current["last_seen"]:
            ignored += 1
        elif current is not None and current["value"] == obs.value:
            current["last_seen"] = obs.at
            if current["row"] is not None:
                current["row"]["last_seen"] = obs.at
            else:
                moved[current["id"]] = obs.at
            extended += 1
        else:
            new_row = dict(zip(series_columns, obs.series, strict=True))
            if describe is not None:
                new_row.update(describe[obs.series])
            new_row.update({value_column: obs.value, "first_seen": obs.at, "last_seen": obs.at})
            new_rows.append(new_row)
            newest[obs.series] = {"value": obs.value, "last_seen": obs.at, "row": new_row}
            inserted += 1
    if moved:
        # One UPDATE per distinct time (a poll stamps everything with one time).
        by_time: dict[datetime, list[int]] = {}
        for row_id, seen in moved.items():
            by_time.setdefault(seen, []).append(row_id)
        for seen, ids in by_time.items():
            for start in range(0, len(ids), _UPDATE_CHUNK):
                conn.execute(
                    update(table)
                    .where(member_of(conn, table.c.id, ids[start : start + _UPDATE_CHUNK]))
                    .values(last_seen=seen)
                )
    if new_rows:
        conn.execute(insert(table), new_rows)
    return IngestStats(inserted=inserted, extended=extended, ignored=ignored)


def prune(conn: Connection, table: Table, series_columns: Sequence[str], cutoff: datetime) -> int:
    """Delete levels last seen before ``cutoff``, keeping the newest level of every series."""
    newer = table.alias("newer")
    has_newer = (
        select(newer.c.id)
        .where(*(newer.c[c] == table.c[c] for c in series_columns))
        .where(newer.c.first_seen > table.c.first_seen)
        .exists()
    )
    result = conn.execute(delete(table).where(table.c.last_seen < cutoff).where(has_newer))
    return int(result.rowcount or 0)
