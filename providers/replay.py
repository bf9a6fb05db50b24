"""Replay of recorded real market data: the embedded default source.

It plays change-point encoded price series (AWS and Azure from coroot/cloud-pricing,
GCP from Cyclenerd's pricing history; see ``arbiter/data/replay/PROVENANCE.md``) on a
virtual timeline, so a new user sees real prices move with no cloud account:

    dataset time = start + (now - first call) × speed      (wrapping at ``end`` if ``loop``)

With the default ``speed`` of 1440 one recorded day passes per real minute. Quotes
carry ``observed_at = now``: the replay stands in for a live market, and the store's
freshness rules apply to it as to any source. The replay keeps its position in memory
only; a restarted daemon starts the recording again from ``start``.

It also gives capacity signals (AWS Spot Advisor interruption buckets, the newest
snapshot per region and type) and the instance-type catalog shipped in
``arbiter/data/instance_types.csv``.

Rows flagged in the recording are handled as the data's README says: a GCP price that
excludes the GPU (``gpu_cost_not_included``) is skipped whole; an on-demand price of
uncertain basis (``ondemand_basis_uncertain``, possibly Windows or Dedicated) is
skipped and its spot price kept.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import AwareDatetime, Field, ValidationError

from arbiter.domain.market import (
    CapacityKind,
    CapacitySignal,
    InstanceType,
    Market,
    Offer,
    PriceQuote,
    Provider,
)
from arbiter.errors import BadPayload, ConfigError
from providers.options import SourceOptions

SHIPPED_PRICES = ("aws_azure_gpu_price_changes.csv", "gcp_gpu_price_changes.csv")
SHIPPED_ADVISOR = "aws_spot_advisor_gpu.csv"
PRICE_COLUMNS = (
    "snapshot_utc",
    "cloud",
    "region",
    "instance_type",
    "ondemand_usd_per_hour",
    "spot_usd_per_hour",
    "status",
    "flag",
)


class ReplayOptions(SourceOptions):
    price_files: tuple[Path, ...] = ()
    """Change files in the shipped format; default: the shipped recordings."""
    advisor_file: Path | None = None
    instance_types_file: Path | None = None
    speed: Annotated[float, Field(gt=0, le=1e7)] = 1440.0
    """Recorded seconds per real second."""
    start: AwareDatetime = datetime(2024, 1, 9, 9, tzinfo=UTC)
    """Default: the first daily snapshot of the AWS and Azure recording (08:23Z)."""
    end: AwareDatetime = datetime(2024, 3, 29, tzinfo=UTC)
    loop: bool = True


@dataclass(frozen=True)
class _Change:
    at: datetime
    series: tuple[str, str, str]
    on_demand: float | None
    spot: float | None
    listed: bool


def _data_path(name: str) -> Any:
    return resources.files("arbiter").joinpath("data", "replay", name)


def _float_or_none(text: str, *, source: str, field: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadPayload(f"not a number: {text!r}", source=source, field=field) from None
    if value < 0:
        raise BadPayload(f"negative price {value}", source=source, field=field)
    return value


def load_changes(texts: Sequence[tuple[str, str]]) -> list[_Change]:
    """Parse change files ``(label, text)``; errors name the file, line and column."""
    changes: list[_Change] = []
    for label, text in texts:
        reader = csv.DictReader(text.splitlines())
        if tuple(reader.fieldnames or ()) != PRICE_COLUMNS:
            raise BadPayload(
                f"header must be {','.join(PRICE_COLUMNS)}", source=label, field="line 1"
            )
        for row in reader:
            where = f"line {reader.line_num}"
            try:
                at = datetime.fromisoformat(row["snapshot_utc"].replace("Z", "+00:00"))
            except ValueError:
                raise BadPayload(
                    f"bad time {row['snapshot_utc']!r}",
                    source=label,
                    field=f"{where}: snapshot_utc",
                ) from None
            if at.tzinfo is None:
                raise BadPayload("time without zone", source=label, field=f"{where}: snapshot_utc")
            flags = set(filter(None, (row.get("flag") or "").split(";")))
            if "gpu_cost_not_included" in flags:
                continue
            on_demand = _float_or_none(
                row["ondemand_usd_per_hour"], source=label, field=f"{where}: ondemand_usd_per_hour"
            )
            if flags & {"ondemand_basis_uncertain", "ondemand_zero_in_source"}:
                on_demand = None
            spot = _float_or_none(
                row["spot_usd_per_hour"], source=label, field=f"{where}: spot_usd_per_hour"
            )
            if row["cloud"] not in ("aws", "gcp", "azure"):
                raise BadPayload(
                    f"unknown cloud {row['cloud']!r}", source=label, field=f"{where}: cloud"
                )
            changes.append(
                _Change(
                    at=at.astimezone(UTC),
                    series=(row["cloud"], row["region"], row["instance_type"]),
                    on_demand=on_demand,
                    spot=spot,
                    listed=row["status"] != "absent",
                )
            )
    changes.sort(key=lambda c: c.at)
    return changes


class ReplaySource:
    """Recorded prices, Spot Advisor buckets and the instance-type catalog, replayed."""

    def __init__(
        self,
        name: str,
        options: ReplayOptions,
        changes: list[_Change],
        advisor: list[CapacitySignal],
        instance_types: list[InstanceType],
    ):
        self.name = name
        self.options = options
        self._changes = changes
        self._advisor = advisor
        self._instance_types = instance_types
        self._anchor: datetime | None = None
        self._cursor = 0
        self._state: dict[tuple[str, str, str], _Change] = {}

    def dataset_time(self, now: datetime) -> datetime:
        """Where in the recording ``now`` falls."""
        if self._anchor is None:
            self._anchor = now
        start, end = self.options.start, self.options.end
        elapsed = (now - self._anchor).total_seconds() * self.options.speed
        span = (end - start).total_seconds()
        if self.options.loop and span > 0:
            elapsed %= span
        else:
            elapsed = min(elapsed, span)
        return start + (end - start) * (elapsed / span if span else 0)

    def _advance_to(self, when: datetime) -> None:
        if self._cursor and self._changes[self._cursor - 1].at > when:
            self._cursor, self._state = 0, {}  # the loop wrapped: replay from the start
        while self._cursor < len(self._changes) and self._changes[self._cursor].at <= when:
            change = self._changes[self._cursor]
            self._state[change.series] = change
            self._cursor += 1

    def fetch_prices(self, *, since: datetime | None, now: datetime) -> Sequence[PriceQuote]:
        self._advance_to(self.dataset_time(now))
        quotes: list[PriceQuote] = []
        for (cloud, region, instance_type), change in self._state.items():
            if not change.listed:
                continue
            for market, price in ((Market.ON_DEMAND, change.on_demand), (Market.SPOT, change.spot)):
                if price is None:
                    continue
                quotes.append(
                    PriceQuote(
                        offer=Offer(
                            provider=Provider(cloud),
                            region=region,
                            instance_type=instance_type,
                            market=market,
                        ),
                        usd_per_hour=price,
                        observed_at=now,
                        source=self.name,
                    )
                )
        return quotes

    def fetch_capacity(self, *, now: datetime) -> Sequence[CapacitySignal]:
        return [s.model_copy(update={"observed_at": now}) for s in self._advisor]

    def fetch_instance_types(self) -> Sequence[InstanceType]:
        return list(self._instance_types)


def load_advisor(label: str, text: str, *, source: str) -> list[CapacitySignal]:
    """Newest Spot Advisor interruption bucket per (region, instance type)."""
    newest: dict[tuple[str, str], tuple[str, int]] = {}
    reader = csv.DictReader(text.splitlines())
    for row in reader:
        try:
            bucket = int(row["interruption_bucket_index"])
        except (KeyError, ValueError):
            raise BadPayload(
                "not an integer",
                source=label,
                field=f"line {reader.line_num}: interruption_bucket_index",
            ) from None
        key = (row["region"], row["instance_type"])
        if key not in newest or row["snapshot_date"] > newest[key][0]:
            newest[key] = (row["snapshot_date"], bucket)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return [
        CapacitySignal(
            provider=Provider.AWS,
            region=region,
            instance_type=itype,
            kind=CapacityKind.INTERRUPTION_BUCKET,
            value=bucket,
            observed_at=epoch,
            source=source,
        )
        for (region, itype), (_, bucket) in sorted(newest.items())
    ]


def load_instance_types(label: str, text: str) -> list[InstanceType]:
    reader = csv.DictReader(text.splitlines())
    types: list[InstanceType] = []
    for row in reader:
        try:
            types.append(
                InstanceType(
                    provider=row["provider"],  # type: ignore[arg-type]
                    name=row["name"],
                    vcpus=int(row["vcpus"]),
                    memory_gib=float(row["memory_gib"]),
                    accelerator=row["accelerator"] or None,
                    accelerator_count=float(row["accelerator_count"] or 0),
                    accelerator_memory_gib=float(row["accelerator_memory_gib"])
                    if row.get("accelerator_memory_gib")
                    else None,
                )
            )
        except (KeyError, ValueError, ValidationError) as exc:
            raise BadPayload(
                str(exc).splitlines()[0], source=label, field=f"line {reader.line_num}"
            ) from None
    return types


def _read(path: Path | None, default: Any, *, option: str, name: str) -> tuple[str, str]:
    if path is None:
        return f"arbiter/data/{default.name}", default.read_text(encoding="utf-8")
    try:
        return str(path), Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}", source=f"sources.{name}.options", key=option
        ) from None


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> ReplaySource:
    """The registry's factory for ``kind = "replay"``; raises ConfigError for bad options."""
    opts = ReplayOptions.parse(name, options)
    if opts.end <= opts.start:
        raise ConfigError("must be after start", source=f"sources.{name}.options", key="end")
    price_texts = (
        [_read(p, None, option="price_files", name=name) for p in opts.price_files]
        if opts.price_files
        else [_read(None, _data_path(f), option="price_files", name=name) for f in SHIPPED_PRICES]
    )
    advisor_label, advisor_text = _read(
        opts.advisor_file, _data_path(SHIPPED_ADVISOR), option="advisor_file", name=name
    )
    types_default = resources.files("arbiter").joinpath("data", "instance_types.csv")
    types_label, types_text = _read(
        opts.instance_types_file, types_default, option="instance_types_file", name=name
    )
    return ReplaySource(
        name,
        opts,
        load_changes(price_texts),
        load_advisor(advisor_label, advisor_text, source=name),
        load_instance_types(types_label, types_text),
    )
