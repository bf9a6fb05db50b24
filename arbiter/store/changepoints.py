"""Change-point encoding: a series keeps one row per value level, with the time the
level was first and last seen.

For each observation, in time order per series: the same value as the newest row moves
that row's ``last_seen``; a different value starts a new row. An observation older than
the newest row's ``last_seen`` is history the store has already passed (a provider
sends the time a spot price changed again with every answer) and is ignored, unless it
is the newest observation of its series in the batch. A batch is written after
everything stored, so its newest observation of a series is the series' current value
whatever the clock read; after the clock stepped back, every observation is older than
what was stored before the step, and ignoring them would keep the old values until the
clock caught up. Such an observation counts as seen at the newest row's ``last_seen``:
the same value leaves the row as it is, a different value starts a new row at that
time. A new row always begins after the row before it (a microsecond after, when they
would begin at one time), so a series' newest row is the one that began last and
history is never rewritten.

Two writers implement these rules. On PostgreSQL the batch goes as one array per column
to one set-based statement that finds every series' newest row, moves ``last_seen`` and
inserts the new levels: one round trip whatever the size of the batch, and no stored
row travels to Python. Elsewhere the newest rows are read into Python, compared there,
and written back in bulk. Both run inside the caller's transaction, so a batch is
stored whole or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, overload

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
from sqlalchemy.exc import StatementError
from sqlalchemy.types import TypeEngine

_CHUNK = 5000
_UPDATE_CHUNK = 5000
_AFTER = timedelta(microseconds=1)
"""How long after the row before it a new row begins, at the least."""


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
    """Observations older than what the store already has for that series, each with a
    newer one of that series in the batch."""

    def __add__(self, other: IngestStats) -> IngestStats:
        return IngestStats(
            self.inserted + other.inserted,
            self.extended + other.extended,
            self.ignored + other.ignored,
        )


class Observation(NamedTuple):
    """One value of a series at a time. A named tuple: a poll makes tens of thousands."""

    series: tuple[Hashable, ...]
    """Values of the table's series columns, in order."""
    value: float
    at: datetime


class Observations(Sequence[Observation]):
    """Observations held as columns: one sequence per series column, the values, the
    times. A poll's tens of thousands of quotes then cost a few lists rather than
    objects of their own (which the garbage collector would walk); PostgreSQL sends
    the columns as they are. It reads as a sequence of :class:`Observation`."""

    def __init__(
        self,
        series: Sequence[Sequence[Hashable]],
        values: Sequence[float],
        times: Sequence[datetime],
    ):
        if any(len(column) != len(values) for column in (*series, times)):
            raise ValueError("every column of a batch of observations needs one entry per row")
        self.series = tuple(series)
        self.values = values
        self.times = times

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, index: int) -> Observation: ...

    @overload
    def __getitem__(self, index: slice) -> list[Observation]: ...

    def __getitem__(self, index: int | slice) -> Observation | list[Observation]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        return Observation(
            tuple(column[index] for column in self.series), self.values[index], self.times[index]
        )

    def __iter__(self) -> Iterator[Observation]:
        rows = zip(zip(*self.series, strict=True), self.values, self.times, strict=True)
        for series, value, at in rows:
            yield Observation(series, value, at)

    @classmethod
    def of(cls, observations: Sequence[Observation], series_columns: int) -> Observations:
        """``observations`` as columns (themselves, when they are)."""
        if isinstance(observations, Observations):
            return observations
        return cls(
            [[o.series[i] for o in observations] for i in range(series_columns)],
            [o.value for o in observations],
            [o.at for o in observations],
        )


def record(
    conn: Connection,
    table: Table,
    series_columns: Sequence[str],
    value_column: str,
    observations: Sequence[Observation],
    describe: Mapping[tuple[Hashable, ...], Mapping[str, Any]] | None = None,
) -> IngestStats:
    """Write observations to a change-point table inside the caller's transaction.

    ``describe`` gives, per series, the other columns a new row needs (the same
    columns for every series). The table needs ``id``, ``first_seen`` and
    ``last_seen`` columns.
    """
    if not observations:
        return IngestStats()
    if conn.dialect.name == "postgresql":
        return _record_set_based(conn, table, series_columns, value_column, observations, describe)
    return _record_row_by_row(conn, table, series_columns, value_column, observations, describe)


# -- PostgreSQL: the batch as arrays, written by one set-based statement ----------------


def unnest_rows(
    conn: Connection, table: Table, columns: Mapping[str, Sequence[Any]]
) -> tuple[str, tuple[Any, ...]]:
    """PostgreSQL: rows given as one sequence per column (named as ``table``'s columns,
    each cast to its type), for a FROM clause: the SQL of a subquery ``s`` with those
    columns and ``ordinal`` (each row's position, from 1), and its parameters for
    ``exec_driver_sql``.

    A column goes as one binary array, or as one value when every row has the same
    (a poll stamps every quote of a source with one source and one time): a handful of
    parameters whatever the number of rows, and no temporary table (which the
    deployment's roles may not create)."""
    quote = conn.dialect.identifier_preparer.quote
    selected, arrays, unnested, params, scalars = [], [], [], [], []
    for name, values in columns.items():
        column_type = table.c[name].type
        # without a length: an explicit cast to varchar(n) would cut a longer value
        # short silently, where storing it must fail
        cast = re.sub(r"\(.*?\)", "", column_type.compile(dialect=conn.dialect))
        if _python_type(column_type) is float:
            values = [None if v is None else float(v) for v in values]  # no int among them
        if values and values.count(values[0]) == len(values):
            selected.append(f"%b::{cast} AS {quote(name)}")
            scalars.append(values[0])
        else:
            selected.append(f"u.{quote(name)}")
            arrays.append(f"%b::{cast}[]")
            unnested.append(quote(name))
            params.append(list(values))
    if arrays:
        source = f"unnest({', '.join(arrays)}) WITH ORDINALITY"
        source += f" AS u({', '.join(unnested)}, ordinal)"
    else:
        source = f"generate_series(1, {len(next(iter(columns.values())))}) AS u(ordinal)"
    # The scalars' placeholders come first in the SQL, so their parameters do too.
    return (
        f"(SELECT {', '.join(selected)}, u.ordinal FROM {source}) AS s",
        (*scalars, *params),
    )


def without_jit(conn: Connection) -> None:
    """PostgreSQL: no JIT compilation for the rest of the transaction. A batch of
    thousands of rows costs enough for the planner to compile its expressions, which
    takes longer (tens of milliseconds) than running them does."""
    conn.exec_driver_sql("SET LOCAL jit = off")


def _python_type(column_type: TypeEngine[Any]) -> type | None:
    try:
        return column_type.python_type
    except NotImplementedError:
        return None


def _record_set_based(
    conn: Connection,
    table: Table,
    series_columns: Sequence[str],
    value_column: str,
    observations: Sequence[Observation],
    describe: Mapping[tuple[Hashable, ...], Mapping[str, Any]] | None,
) -> IngestStats:
    """The batch as the table's own columns, one row per observation: the series
    columns, the value, ``first_seen`` holding the observation's time and the described
    columns; ``ordinal`` is its position in the batch."""
    batch = Observations.of(observations, len(series_columns))
    described = describe or {}
    extra = list(next(iter(described.values()), ()))
    bound = _bound_times(conn, table, batch.times)
    columns: dict[str, Sequence[Any]] = dict(zip(series_columns, batch.series, strict=True))
    columns[value_column] = batch.values
    columns["first_seen"] = [bound[at] for at in batch.times]
    for name in extra:
        columns[name] = [described[series][name] for series in zip(*batch.series, strict=True)]
    rows, params = unnest_rows(conn, table, columns)
    without_jit(conn)
    write = _one_per_series_sql if _one_per_series(batch.series) else _many_per_series_sql
    statement = write(conn, table, rows, series_columns, value_column, extra)
    live, inserted = conn.exec_driver_sql(statement, params).one()
    return IngestStats(
        inserted=inserted,
        extended=live - inserted,
        ignored=len(batch) - live,
    )


def _one_per_series(series: Sequence[Sequence[Hashable]]) -> bool:
    """Whether no series appears twice. A column with one value throughout (a poll's
    source) tells none apart and is left out of the comparison."""
    rows = len(series[0])
    varying = [column for column in series if column.count(column[0]) != rows]
    if not varying:
        return rows == 1
    if len(varying) == 1:
        return len(set(varying[0])) == rows
    return len(set(zip(*varying, strict=True))) == rows


def _bound_times(conn: Connection, table: Table, times: Sequence[datetime]) -> dict[datetime, Any]:
    """Each distinct observation time as the ``first_seen`` column binds it (UtcDateTime
    refuses naive times): the arrays bypass SQLAlchemy's bind processing."""
    process = table.c.first_seen.type.bind_processor(conn.dialect)
    distinct = set(times)
    if process is None:
        return {at: at for at in distinct}
    try:
        return {at: process(at) for at in distinct}
    except (TypeError, ValueError) as exc:
        raise StatementError(str(exc), None, None, exc) from exc


def _newest_levels_sql(
    conn: Connection, table: Table, batch: str, series_columns: Sequence[str], value_column: str
) -> str:
    """CTE ``obs``: every observation of the batch with its series' newest stored row
    (NULLs for a new series), found by one backward index scan per observation."""
    q = conn.dialect.identifier_preparer.quote
    same_series = " AND ".join(f"t.{q(c)} = s.{q(c)}" for c in series_columns)
    return (
        f"obs AS (SELECT s.*, h.id AS head_id, h.{q(value_column)} AS head_value, "
        f"h.first_seen AS head_first_seen, h.last_seen AS head_last_seen FROM {batch} "
        f"LEFT JOIN LATERAL (SELECT t.id, t.{q(value_column)}, t.first_seen, t.last_seen "
        f"FROM {q(table.name)} AS t WHERE {same_series} ORDER BY t.first_seen DESC LIMIT 1) "
        f"AS h ON true)"
    )


def _begins_sql(seen: str) -> str:
    """SQL: when a new row begins whose value was seen at ``seen``: then, or a
    microsecond after the newest stored row began (greatest() skips the NULLs of a
    series with no stored row)."""
    return f"greatest({seen}, head_first_seen + interval '1 microsecond')"


def _one_per_series_sql(
    conn: Connection,
    table: Table,
    batch: str,
    series_columns: Sequence[str],
    value_column: str,
    extra: Sequence[str],
) -> str:
    """Each series observed at most once: compare with the newest row directly (every
    observation is its series' newest in the batch, so none is ignored). Returns
    (observations not ignored, rows inserted)."""
    q = conn.dialect.identifier_preparer.quote
    value = q(value_column)
    series = ", ".join(q(c) for c in series_columns)
    described = "".join(f", {q(c)}" for c in extra)
    begins = _begins_sql("greatest(first_seen, head_last_seen)")
    # An unchanged value seen again at the same time, or before (the clock stepped
    # back), writes nothing: the row is as it would be written, and PostgreSQL is
    # spared a dead row version.
    return (
        f"WITH {_newest_levels_sql(conn, table, batch, series_columns, value_column)}, "
        f"moved AS (UPDATE {q(table.name)} AS t SET last_seen = o.first_seen FROM obs AS o "
        f"WHERE t.id = o.head_id AND o.{value} = o.head_value "
        f"AND o.first_seen > o.head_last_seen), "
        f"added AS (INSERT INTO {q(table.name)} ({series}, {value}, first_seen, last_seen"
        f"{described}) SELECT {series}, {value}, begins, begins{described} FROM ("
        f"SELECT obs.*, {begins} AS begins FROM obs "
        f"WHERE head_id IS NULL OR {value} <> head_value) AS changed "
        f"ORDER BY begins, ordinal RETURNING 1) "
        f"SELECT count(*), (SELECT count(*) FROM added) FROM obs"
    )


def _many_per_series_sql(
    conn: Connection,
    table: Table,
    batch: str,
    series_columns: Sequence[str],
    value_column: str,
    extra: Sequence[str],
) -> str:
    """Any number of observations per series: the observations not ignored, in time
    order per series, are numbered by level (a level starts where the value differs
    from the one before; level 0 continues the newest stored row). ``seen`` is when
    each counts as seen: its time, or the stored row's ``last_seen`` for a series'
    newest observation older than that (then the only one of its series not ignored).
    Returns (observations not ignored, rows inserted)."""
    q = conn.dialect.identifier_preparer.quote
    value = q(value_column)
    series = ", ".join(q(c) for c in series_columns)
    described = "".join(f", {q(c)}" for c in extra)
    in_order = f"PARTITION BY {series} ORDER BY first_seen, ordinal"
    starts = f"(previous IS NULL OR {value} <> previous)"
    # Only a batch's first level can begin where the stored row began; a later one
    # begins at its own time, after the observations before it (one series is not
    # observed twice at one time, nor, in practice, a microsecond apart).
    begins = f"CASE WHEN level = 1 THEN {_begins_sql('seen')} ELSE seen END"
    return (
        f"WITH {_newest_levels_sql(conn, table, batch, series_columns, value_column)}, "
        f"ranked AS (SELECT obs.*, lead(ordinal) OVER ({in_order}) IS NULL AS newest "
        f"FROM obs), "
        f"live AS (SELECT ranked.*, greatest(first_seen, head_last_seen) AS seen, "
        f"coalesce(lag({value}) OVER w, head_value) AS previous FROM ranked "
        f"WHERE head_id IS NULL OR first_seen >= head_last_seen OR newest "
        f"WINDOW w AS ({in_order})), "
        f"levels AS (SELECT live.*, {starts} AS starts, "
        f"count(*) FILTER (WHERE {starts}) OVER ({in_order} ROWS UNBOUNDED PRECEDING) "
        f"AS level FROM live), "
        f"spans AS (SELECT levels.*, max(seen) OVER (PARTITION BY {series}, level) "
        f"AS level_last FROM levels), "
        f"moved AS (UPDATE {q(table.name)} AS t SET last_seen = m.level_last FROM "
        f"(SELECT DISTINCT head_id, head_last_seen, level_last FROM spans WHERE level = 0) "
        f"AS m WHERE t.id = m.head_id AND m.level_last > m.head_last_seen), "
        f"added AS (INSERT INTO {q(table.name)} ({series}, {value}, first_seen, last_seen"
        f"{described}) SELECT {series}, {value}, begins, greatest(level_last, begins)"
        f"{described} FROM (SELECT spans.*, {begins} AS begins FROM spans WHERE starts) "
        f"AS changed ORDER BY begins, ordinal RETURNING 1) "
        f"SELECT (SELECT count(*) FROM live), (SELECT count(*) FROM added)"
    )


# -- elsewhere: newest rows read, compared in Python, written in bulk ------------------


def _record_row_by_row(
    conn: Connection,
    table: Table,
    series_columns: Sequence[str],
    value_column: str,
    observations: Sequence[Observation],
    describe: Mapping[tuple[Hashable, ...], Mapping[str, Any]] | None,
) -> IngestStats:
    ordered = sorted(observations, key=lambda o: o.at)
    newest_in_batch = {o.series: i for i, o in enumerate(ordered)}
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
            select(table.c.id, *cols, value_col, table.c.first_seen, table.c.last_seen).join(
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
                    "first_seen": row[2 + n],
                    "last_seen": row[3 + n],
                    "row": None,
                }
    new_rows: list[dict[str, Any]] = []
    moved: dict[int, datetime] = {}
    inserted = extended = ignored = 0
    for index, obs in enumerate(ordered):
        current = newest.get(obs.series)
        seen = obs.at
        if current is not None and seen < current["last_seen"]:
            if index != newest_in_batch[obs.series]:
                ignored += 1
                continue
            seen = current["last_seen"]  # the current value, whatever the clock read
        if current is not None and current["value"] == obs.value:
            if seen > current["last_seen"]:
                current["last_seen"] = seen
                if current["row"] is not None:
                    current["row"]["last_seen"] = seen
                else:
                    moved[current["id"]] = seen
            extended += 1
        else:
            if current is not None:
                seen = max(seen, current["first_seen"] + _AFTER)
            new_row = dict(zip(series_columns, obs.series, strict=True))
            if describe is not None:
                new_row.update(describe[obs.series])
            new_row.update({value_column: obs.value, "first_seen": seen, "last_seen": seen})
            new_rows.append(new_row)
            newest[obs.series] = {
                "value": obs.value,
                "first_seen": seen,
                "last_seen": seen,
                "row": new_row,
            }
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
