"""``arbiter backtest``, the shell: read recorded market data, build one market
snapshot per step, run the pure engine (:mod:`arbiter.domain.backtest`) and render
its result as a table, JSON and plots.

**Data.** ``--data`` takes files and directories (every ``*.csv`` in a directory) and
recognises each file by its header; ``default`` stands for the permissively licensed
recordings shipped with arbiter (:data:`SHIPPED`). Without ``--data`` the default is
used. Recognised formats:

* price changes in the replay format (``snapshot_utc,cloud,region,instance_type,…``,
  see ``providers/replay.py``) or in the shared collection's GCP format
  (``snapshot_utc,machine_type,region,…``); flagged rows are handled as the replay
  handles them;
* observation times of a price recording (``snapshot_utc,source_commit,…``): a price
  file whose times all appear in one of these takes its observation times from it
  (a change-point file has a row only when a price *changed*); otherwise its own times;
* hourly grid carbon intensity, wide (``datetime_utc,<ZONE>_lca,…,<ZONE>_direct``:
  the ``_direct`` columns are used, the basis of the static factors) or long
  (``datetime_utc,zone,carbon_intensity_gco2_per_kwh,…``);
* the AWS Spot Advisor (``snapshot_date,region,instance_type,…``);
* the "Can't Be Late" spot traces: the index (``trace_id,trace_kind,…``) and the
  run-length encoded traces (``trace_id,segment_start_offset_s,…``).

Other files are listed as skipped. Files without a licence that allows shipping them
(the hourly carbon intensity, ODbL; the spot traces, no licence) are read only from a
path given at run time; see ``docs/backtest.md``.

**Snapshots.** At each step every price recording contributes the prices in force then
(a change holds until the next), seen at the recording's newest observation; a price
is stale when that observation is older than ``stale_after`` (and the freshest source
wins where two recordings price the same offer, as in the daemon's snapshot).
Offers of GPU models no workload accepts are left out (decide would exclude them by
the ``workload-gpu`` rule anyway; leaving them out keeps each decide small). Carbon per
grid zone is the hourly reading of the step's hour where one is recorded, else the
shipped static annual factor (marked stale, as in the daemon). Spot offers carry the
Spot Advisor bucket of the newest advisor snapshot not after the step (else the
oldest). The same offers tuple is passed on while nothing changed, so the engine
decides again only when the market did.
"""

from __future__ import annotations

import csv
import io
import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from arbiter.domain.backtest import (
    NO_PREEMPTIONS,
    AdvisorRates,
    BacktestResult,
    SpotModel,
    StrategyKind,
    StrategyResult,
    Trace,
    TraceReplay,
)
from arbiter.domain.market import CarbonBasis, InstanceType, Market, Offer, Provider
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.snapshot import MarketSnapshot, OfferState, ZoneCarbon
from arbiter.errors import BadPayload, ConfigError
from providers.replay import PRICE_COLUMNS, load_changes, load_instance_types

DEFAULT = "default"
SHIPPED = (
    "replay/aws_azure_gpu_price_changes.csv",
    "replay/gcp_gpu_price_changes.csv",
    "replay/aws_spot_advisor_gpu.csv",
    "backtest/gcp_gpu_price_snapshots.csv",
    "backtest/multicloud_gpu_price_snapshots.csv",
)
"""The recordings read by default, under ``arbiter/data`` (licences in the
PROVENANCE.md beside each)."""
GCP_TRAIN_COLUMNS = (
    "snapshot_utc",
    "machine_type",
    "region",
    "ondemand_usd_per_hour",
    "spot_usd_per_hour",
    "status",
)
DEFAULT_STALE_AFTER = timedelta(days=17)
"""A recording's prices are fresh while its newest observation is at most this old:
the GCP recording's longest gap between observations from 2023 on is 16 days."""
CARBON_SOURCE_HOURLY = "recorded-hourly"
MAX_EVENTS = 500
"""Events (moves, rollbacks, preemptions) listed per strategy in the JSON, first ones first."""


def _bad(option: str, message: str) -> ConfigError:
    """A run-time input the backtest cannot use, named by its option."""
    return ConfigError(message, source="arbiter backtest", key=option)


def _data_file(name: str) -> Any:
    return resources.files("arbiter").joinpath("data", *name.split("/"))


def _time(text: str, *, source: str, where: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadPayload(f"bad time {text!r}", source=source, field=where) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)  # the recordings are UTC throughout
    return at.astimezone(UTC)


# ------------------------------------------------------------------------- reading


@dataclass
class PriceRecording:
    label: str
    changes: list[Any]
    """Parsed by :func:`providers.replay.load_changes`, in time order."""
    observed: list[datetime] = field(default_factory=list)


@dataclass
class MarketData:
    """Everything read for a backtest, and what each file was used as."""

    prices: list[PriceRecording] = field(default_factory=list)
    observation_sets: list[tuple[str, list[datetime]]] = field(default_factory=list)
    carbon: dict[str, dict[datetime, float]] = field(default_factory=dict)
    """Zone → hour → gCO2eq/kWh (direct)."""
    carbon_labels: list[str] = field(default_factory=list)
    advisor: list[tuple[str, str, str, int]] = field(default_factory=list)
    """(snapshot date, region, instance type, bucket)."""
    trace_index: dict[str, dict[str, str]] = field(default_factory=dict)
    trace_segments: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    used: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "used": [{"file": f, "as": what} for f, what in self.used],
            "skipped": [{"file": f, "why": why} for f, why in self.skipped],
        }


def _files(paths: Sequence[str]) -> list[tuple[str, str]]:
    """(label, text) of every file named, ``default`` standing for the shipped set."""
    out: list[tuple[str, str]] = []
    for given in paths:
        if given == DEFAULT:
            for name in SHIPPED:
                out.append((f"arbiter/data/{name}", _data_file(name).read_text(encoding="utf-8")))
            continue
        path = Path(given)
        if path.is_dir():
            members = sorted(p for p in path.iterdir() if p.suffix == ".csv" and p.is_file())
        elif path.is_file():
            members = [path]
        else:
            raise _bad("--data", f"{given}: no such file or directory")
        for p in members:
            try:
                out.append((str(p), p.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise _bad("--data", f"{p}: cannot read: {exc}") from None
    return out


def read_data(paths: Sequence[str] = (DEFAULT,)) -> MarketData:
    """Read and recognise every file (see the module docstring); BadPayload or
    ConfigError name the file, line and field of a problem."""
    data = MarketData()
    for label, text in _files(paths or (DEFAULT,)):
        header = tuple(next(csv.reader(io.StringIO(text)), []))
        if header == PRICE_COLUMNS:
            data.prices.append(PriceRecording(label, load_changes([(label, text)])))
            data.used.append((label, "price changes"))
        elif header == GCP_TRAIN_COLUMNS:
            data.prices.append(PriceRecording(label, load_changes([(label, _gcp_train(text))])))
            data.used.append((label, "price changes (GCP)"))
        elif header[:2] == ("snapshot_utc", "source_commit"):
            times = sorted(
                _time(r["snapshot_utc"], source=label, where=f"line {i + 2}")
                for i, r in enumerate(csv.DictReader(io.StringIO(text)))
            )
            data.observation_sets.append((label, times))
            data.used.append((label, "observation times"))
        elif header[:1] == ("datetime_utc",) and any(h.endswith("_direct") for h in header):
            _wide_carbon(label, text, data)
        elif header[:3] == ("datetime_utc", "zone", "carbon_intensity_gco2_per_kwh"):
            _long_carbon(label, text, data)
        elif header[:3] == ("snapshot_date", "region", "instance_type"):
            for i, r in enumerate(csv.DictReader(io.StringIO(text))):
                try:
                    bucket = int(r["interruption_bucket_index"])
                except (KeyError, ValueError):
                    raise BadPayload(
                        "not an integer", source=label, field=f"line {i + 2}: bucket"
                    ) from None
                data.advisor.append((r["snapshot_date"], r["region"], r["instance_type"], bucket))
            data.used.append((label, "Spot Advisor interruption buckets"))
        elif header[:2] == ("trace_id", "trace_kind"):
            for r in csv.DictReader(io.StringIO(text)):
                data.trace_index[r["trace_id"]] = r
            data.used.append((label, "spot trace index"))
        elif header[:2] == ("trace_id", "segment_start_offset_s"):
            for i, r in enumerate(csv.DictReader(io.StringIO(text))):
                try:
                    seg = (
                        float(r["segment_start_offset_s"]),
                        float(r["segment_end_offset_s"]),
                        float(r["value"]),
                    )
                except (KeyError, ValueError):
                    raise BadPayload("not a number", source=label, field=f"line {i + 2}") from None
                data.trace_segments.setdefault(r["trace_id"], []).append(seg)
            data.used.append((label, "spot availability traces"))
        else:
            data.skipped.append((label, "not a format the backtest reads"))
    for rec in data.prices:
        own = sorted({c.at for c in rec.changes})
        rec.observed = own
        for name, times in data.observation_sets:
            if set(own) <= set(times):
                rec.observed = times
                data.used.append((rec.label, f"observed at the times of {name}"))
                break
    if not data.prices:
        raise _bad("--data", "no price recording among the files given")
    return data


def _gcp_train(text: str) -> str:
    """The shared collection's GCP format in the replay format (cloud ``gcp``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PRICE_COLUMNS)
    for r in csv.DictReader(io.StringIO(text)):
        writer.writerow(
            [
                r["snapshot_utc"],
                "gcp",
                r["region"],
                r["machine_type"],
                r["ondemand_usd_per_hour"],
                r["spot_usd_per_hour"],
                r["status"],
                "",
            ]
        )
    return out.getvalue()


def _number(text: str, *, source: str, where: str) -> float | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadPayload(f"not a number: {text!r}", source=source, field=where) from None
    if not math.isfinite(value) or value < 0:
        raise BadPayload(f"not an intensity: {text!r}", source=source, field=where)
    return value


def _wide_carbon(label: str, text: str, data: MarketData) -> None:
    reader = csv.DictReader(io.StringIO(text))
    zones = [h[: -len("_direct")] for h in reader.fieldnames or () if h.endswith("_direct")]
    for i, r in enumerate(reader):
        at = _time(r["datetime_utc"], source=label, where=f"line {i + 2}: datetime_utc")
        for zone in zones:
            value = _number(r[f"{zone}_direct"], source=label, where=f"line {i + 2}: {zone}")
            if value is not None:
                data.carbon.setdefault(zone, {})[at] = value
    data.carbon_labels.append(label)
    data.used.append((label, f"hourly carbon intensity, direct ({len(zones)} zones)"))


def _long_carbon(label: str, text: str, data: MarketData) -> None:
    zones = set()
    for i, r in enumerate(csv.DictReader(io.StringIO(text))):
        at = _time(r["datetime_utc"], source=label, where=f"line {i + 2}: datetime_utc")
        value = _number(
            r["carbon_intensity_gco2_per_kwh"], source=label, where=f"line {i + 2}: intensity"
        )
        if value is not None:
            data.carbon.setdefault(r["zone"], {})[at] = value
            zones.add(r["zone"])
    data.carbon_labels.append(label)
    data.used.append((label, f"hourly carbon intensity ({len(zones)} zones)"))


# ------------------------------------------------------------------------- spot model


def spot_model(data: MarketData, mode: str, *, seed: int) -> SpotModel:
    """``auto``: the recorded traces for the offers they match (cloud, region and
    instance type of a 1-node trace), the Spot Advisor rate for the others; ``stress``:
    a recorded GPU trace for every spot offer; ``advisor``: the rate for all; ``none``."""
    if mode == "none":
        return NO_PREEMPTIONS
    rates = AdvisorRates(seed)
    if mode == "advisor":
        return rates
    matched: dict[tuple[str, str, str], list[Trace]] = defaultdict(list)
    gpu: list[Trace] = []
    for trace_id, segments in sorted(data.trace_segments.items()):
        meta = data.trace_index.get(trace_id)
        if meta is None or meta.get("cluster_target_nodes") != "1":
            continue
        segments.sort()
        trace = Trace(trace_id, tuple((s, e, v > 0) for s, e, v in segments))
        zone = meta["zone"]
        region = zone[:-1] if meta["cloud"] == "aws" else zone.rsplit("-", 1)[0]
        matched[(meta["cloud"], region, meta["instance_type"])].append(trace)
        if meta["accelerator_or_cpu"] in ("v100", "k80"):
            gpu.append(trace)
    if mode == "stress":
        if not gpu:
            raise _bad("--preemptions", "stress needs the spot traces (index and traces) in --data")
        return TraceReplay({}, rates, stress=gpu)
    if not matched:
        return rates
    return TraceReplay(matched, rates)


# ------------------------------------------------------------------------- snapshots


@dataclass
class _Cursor:
    rec: PriceRecording
    index: int = 0
    state: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    def advance(self, at: datetime) -> None:
        changes = self.rec.changes
        while self.index < len(changes) and changes[self.index].at <= at:
            change = changes[self.index]
            self.state[change.series] = change
            self.index += 1

    def seen(self, at: datetime) -> datetime | None:
        i = bisect_right(self.rec.observed, at)
        return self.rec.observed[i - 1] if i else None


class MarketReplay:
    """Builds the market snapshot of each step from the recordings."""

    def __init__(
        self,
        data: MarketData,
        instance_types: Sequence[InstanceType],
        catalog: RegionCatalog,
        static_carbon: Mapping[str, ZoneCarbon],
        *,
        accelerators: set[str],
        providers: set[str] | None = None,
        stale_after: timedelta = DEFAULT_STALE_AFTER,
    ) -> None:
        self.data = data
        self.types = {(t.provider.value, t.name): t for t in instance_types}
        self.catalog = catalog
        self.accelerators = accelerators
        self.providers = providers
        self.stale_after = stale_after
        self.cursors = []
        for rec in data.prices:
            # a recording contributes only its series of the wanted providers, so
            # observations of the others never make the market look changed
            changes = [c for c in rec.changes if not providers or c.series[0] in providers]
            if changes:
                self.cursors.append(_Cursor(PriceRecording(rec.label, changes, rec.observed)))
        self.static_carbon = static_carbon
        self._offers: tuple[OfferState, ...] = ()
        self._offers_key: object = None
        self._carbon: tuple[ZoneCarbon, ...] = ()
        self._carbon_key: object = None
        self._version = 0
        dates = sorted({d for d, _, _, _ in data.advisor})
        self.advisor_dates = dates
        self.advisor: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        for d, region, itype, bucket in data.advisor:
            self.advisor[d][(region, itype)] = bucket
        self.zones = sorted(
            {r.grid_zone for r in catalog} & (set(static_carbon) | set(data.carbon))
        )

    def _advisor_date(self, at: datetime) -> str | None:
        if not self.advisor_dates:
            return None
        i = bisect_right(self.advisor_dates, at.date().isoformat())
        return self.advisor_dates[i - 1] if i else self.advisor_dates[0]

    def offers(self, at: datetime) -> tuple[OfferState, ...]:
        for c in self.cursors:
            c.advance(at)
        seen = [c.seen(at) for c in self.cursors]
        stale = [s is None or at - s > self.stale_after for s in seen]
        advisor = self._advisor_date(at)
        key = (tuple(c.index for c in self.cursors), tuple(seen), tuple(stale), advisor)
        if key == self._offers_key:
            return self._offers
        buckets = self.advisor.get(advisor or "", {})
        best: dict[str, OfferState] = {}
        for cursor, seen_at, is_stale in zip(self.cursors, seen, stale, strict=True):
            if seen_at is None:
                continue
            for (cloud, region, itype), change in cursor.state.items():
                if not change.listed or (self.providers and cloud not in self.providers):
                    continue
                t = self.types.get((cloud, itype))
                if t is None or t.accelerator not in self.accelerators:
                    continue
                for market, price in (
                    (Market.ON_DEMAND, change.on_demand),
                    (Market.SPOT, change.spot),
                ):
                    if price is None:
                        continue
                    bucket = buckets.get((region, itype)) if market is Market.SPOT else None
                    state = OfferState(
                        offer=Offer(
                            provider=Provider(cloud),
                            region=region,
                            instance_type=itype,
                            market=market,
                        ),
                        usd_per_hour=price,
                        seen_at=seen_at,
                        stale=is_stale,
                        accelerator=t.accelerator,
                        accelerator_count=t.accelerator_count,
                        accelerator_memory_gib=t.accelerator_memory_gib,
                        interruption_bucket=bucket if cloud == "aws" else None,
                    )
                    k = state.offer.key
                    held = best.get(k)
                    if held is None or (held.stale, -held.seen_at.timestamp()) > (
                        state.stale,
                        -state.seen_at.timestamp(),
                    ):
                        best[k] = state
        self._offers = tuple(best[k] for k in sorted(best))
        self._offers_key = key
        self._version += 1
        return self._offers

    def carbon(self, at: datetime) -> tuple[ZoneCarbon, ...]:
        hour = at.replace(minute=0, second=0, microsecond=0)
        recorded = tuple(z for z in self.zones if hour in self.data.carbon.get(z, {}))
        key = (hour, recorded) if recorded else "static"
        if key == self._carbon_key:
            return self._carbon
        out = []
        for zone in self.zones:
            value = self.data.carbon.get(zone, {}).get(hour)
            if value is not None:
                out.append(
                    ZoneCarbon(
                        zone=zone,
                        gco2_per_kwh=value,
                        basis=CarbonBasis.DIRECT,
                        valid_at=hour,
                        source=CARBON_SOURCE_HOURLY,
                    )
                )
            elif zone in self.static_carbon:
                out.append(self.static_carbon[zone])
        self._carbon = tuple(out)
        self._carbon_key = key
        return self._carbon

    def snapshot(self, at: datetime) -> MarketSnapshot:
        offers = self.offers(at)
        carbon = self.carbon(at)
        # built from values validated when they were made, without copying them: the
        # engine recognises an unchanged market by the identity of its offers tuple
        return MarketSnapshot.model_construct(
            id=f"bt{self._version}-{at:%Y%m%dT%H%M}",
            taken_at=at,
            offers=offers,
            carbon=carbon,
        )

    def snapshots(
        self, start: datetime, end: datetime, step: timedelta
    ) -> Iterator[MarketSnapshot]:
        t = start
        while t < end:
            yield self.snapshot(t)
            t += step


def shipped_instance_types() -> list[InstanceType]:
    text = _data_file("instance_types.csv").read_text(encoding="utf-8")
    return load_instance_types("arbiter/data/instance_types.csv", text)


def static_carbon(zones: Sequence[str]) -> dict[str, ZoneCarbon]:
    """The shipped static annual factors (``providers/static_carbon.py``), stale."""
    from providers import static_carbon as static

    source = static.build("static-carbon", {}, timeout=0)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return {
        r.zone: ZoneCarbon(
            zone=r.zone,
            gco2_per_kwh=r.value,
            basis=r.basis,
            valid_at=r.valid_at,
            source=r.source,
            stale=True,
        )
        for r in source.fetch_carbon(list(zones), now=epoch)
    }


# ------------------------------------------------------------------------- reporting


def _pct(part: float, whole: float) -> float | None:
    return None if whole <= 0 else 100.0 * part / whole


def summary(result: BacktestResult) -> list[dict[str, Any]]:
    """One row per strategy: the figures of the table and of the JSON."""
    by_kind = {s.kind: s for s in result.strategies}
    od = by_kind.get(StrategyKind.STATIC_ON_DEMAND)
    hind = by_kind.get(StrategyKind.HINDSIGHT)
    hind_obj = by_kind.get(StrategyKind.HINDSIGHT_OBJECTIVE)
    rows = []
    for s in result.strategies:
        rows.append(
            {
                "strategy": s.name,
                "kind": s.kind.value,
                "cost_usd": round(s.cost_usd, 2),
                "savings_vs_static_on_demand_pct": _round(
                    _pct(od.cost_usd - s.cost_usd, od.cost_usd) if od else None
                ),
                "over_hindsight_pct": _round(
                    _pct(s.cost_usd - hind.cost_usd, hind.cost_usd) if hind else None
                ),
                "over_hindsight_objective_pct": _round(
                    _pct(s.cost_usd - hind_obj.cost_usd, hind_obj.cost_usd) if hind_obj else None
                ),
                "carbon_kg": round(s.carbon_g / 1000, 1),
                "migrations": s.migrations,
                "evacuations": s.evacuations,
                "migrations_per_workload_day": round(result.migrations_per_workload_day(s), 3),
                "availability_pct": round(100 * s.availability, 3),
                "violations_replica_hours": round(s.violation_hours, 3),
                "sovereignty_violation_replica_hours": round(s.sovereignty_violation_hours, 3),
                "slo_violation_replica_hours": round(s.slo_violation_hours, 3),
                "carbon_cap_violation_replica_hours": round(s.other_violation_hours, 3),
                "preemptions": s.preemptions,
                "reacquired": s.reacquired,
                "rollbacks": s.rollbacks,
                "egress_usd": round(s.egress_usd, 2),
                "unplaced_workload_hours": round(s.unplaced_hours, 1),
                "cost_by_workload_usd": {
                    k: round(v, 2) for k, v in sorted(s.cost_by_workload.items())
                },
                "carbon_kg_by_workload": {
                    k: round(v / 1000, 1) for k, v in sorted(s.carbon_by_workload.items())
                },
                "usd_per_million_tokens_by_workload": {
                    w: _round(s.usd_per_million_tokens(w), 4) for w in result.workloads
                },
                "migrations_by_workload": dict(sorted(s.migrations_by_workload.items())),
                "events": [
                    {
                        "at": e.at.isoformat(),
                        "kind": e.kind,
                        "workload": e.workload,
                        "detail": e.detail,
                    }
                    for e in s.events[:MAX_EVENTS]
                ],
                "events_left_out": max(0, len(s.events) - MAX_EVENTS),
            }
        )
    return rows


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def daily_series(result: BacktestResult) -> dict[str, Any]:
    """Cost (USD) and carbon (kg) per UTC day and strategy."""
    days: list[str] = []
    index: dict[str, int] = {}
    for t in result.times:
        d = t.date().isoformat()
        if d not in index:
            index[d] = len(days)
            days.append(d)
    out: dict[str, Any] = {"dates": days}
    for s in result.strategies:
        cost = [0.0] * len(days)
        carbon = [0.0] * len(days)
        for t, c, g in zip(result.times, s.step_cost_usd, s.step_carbon_g, strict=True):
            i = index[t.date().isoformat()]
            cost[i] += c
            carbon[i] += g / 1000
        out[s.name] = {
            "cost_usd": [round(v, 2) for v in cost],
            "carbon_kg": [round(v, 3) for v in carbon],
        }
    return out


def to_json(
    result: BacktestResult, data: MarketData, *, settings: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "from": result.start.isoformat(),
        "to": result.end.isoformat(),
        "step_seconds": result.step.total_seconds(),
        "steps": len(result.times),
        "days": round(result.days, 3),
        "workloads": list(result.workloads),
        "settings": dict(settings),
        "spot_model": result.spot_model,
        "decide_calls": result.decide_calls,
        "hindsight": "the cheapest compliant placement in USD at every step on the full "
        "market, with free migrations, no warm-up and no preemption: a lower bound, not "
        "an exact offline optimum with migration costs",
        "hindsight_objective": "decide's own answer (the policies' objective) at every "
        "step, with free migrations, no warm-up and no preemption",
        "data": data.describe(),
        "strategies": summary(result),
        "daily": daily_series(result),
    }


def table_rows(result: BacktestResult) -> tuple[list[str], list[list[str]]]:
    columns = [
        "strategy",
        "cost USD",
        "saved vs static OD",
        "vs hindsight",
        "vs hindsight-obj",
        "carbon kg",
        "migrations/workload/day",
        "availability",
        "violations",
    ]
    rows = []
    for r in summary(result):
        rows.append(
            [
                r["strategy"],
                f"{r['cost_usd']:,.0f}",
                _fmt_pct(r["savings_vs_static_on_demand_pct"]),
                _fmt_pct(r["over_hindsight_pct"]),
                _fmt_pct(r["over_hindsight_objective_pct"]),
                f"{r['carbon_kg']:,.0f}",
                f"{r['migrations_per_workload_day']:.3f}",
                f"{r['availability_pct']:.2f} %",
                f"{r['violations_replica_hours']:g}",
            ]
        )
    return columns, rows


def _fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f} %"


def plot(result: BacktestResult, directory: Path) -> list[Path]:
    """``cost.png`` and ``carbon.png``: per day and cumulative, one line per strategy."""
    try:
        import matplotlib
    except ImportError:
        raise _bad(
            "--plots", "needs matplotlib (it is in requirements.lock: scripts/bootstrap)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    series = daily_series(result)
    dates = [datetime.fromisoformat(d) for d in series["dates"]]
    written = []
    for name, key, unit in (("cost", "cost_usd", "USD"), ("carbon", "carbon_kg", "kg CO2e")):
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
        for s in result.strategies:
            values = series[s.name][key]
            total = 0.0
            cumulative = []
            for v in values:
                total += v
                cumulative.append(total)
            style = "--" if s.kind.value.startswith("hindsight") else "-"
            top.plot(dates, values, style, label=s.name, linewidth=1)
            bottom.plot(dates, cumulative, style, label=s.name, linewidth=1.2)
        top.set_ylabel(f"{unit} per day")
        bottom.set_ylabel(f"cumulative {unit}")
        top.set_title(
            f"{name} per strategy, {result.start:%Y-%m-%d} → {result.end:%Y-%m-%d} "
            f"({len(result.workloads)} workloads)"
        )
        top.legend(fontsize=8, ncol=4, loc="best")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


__all__ = [
    "DEFAULT",
    "DEFAULT_STALE_AFTER",
    "MarketData",
    "MarketReplay",
    "StrategyResult",
    "plot",
    "read_data",
    "shipped_instance_types",
    "spot_model",
    "static_carbon",
    "summary",
    "table_rows",
    "to_json",
]
