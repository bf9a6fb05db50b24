"""The replay source: recorded prices on a virtual timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from arbiter.errors import BadPayload, ConfigError
from providers.replay import build

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HEADER = (
    "snapshot_utc,cloud,region,instance_type,ondemand_usd_per_hour,spot_usd_per_hour,status,flag\n"
)
TYPES = (
    "provider,name,vcpus,memory_gib,accelerator,accelerator_count,accelerator_memory_gib\n"
    "aws,p5.48xlarge,192,2048,H100,8,80\n"
)
ADVISOR = (
    "snapshot_date,region,instance_type,vcpus,memory_gib,savings_vs_ondemand_pct,"
    "interruption_bucket_index,interruption_frequency_label\n"
    "2021-02-10,us-east-1,p5.48xlarge,192,2048,70,4,>20%\n"
    "2025-06-28,us-east-1,p5.48xlarge,192,2048,70,1,5-10%\n"
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    prices = tmp_path / "prices.csv"
    prices.write_text(
        HEADER
        + "2024-01-01T00:00:00Z,aws,us-east-1,p5.48xlarge,98.32,40.0,listed,\n"
        + "2024-01-02T00:00:00Z,aws,us-east-1,p5.48xlarge,98.32,35.0,listed,\n"
        + "2024-01-02T00:00:00Z,azure,eastus,Standard_X,5.0,1.0,listed,ondemand_basis_uncertain\n"
        + "2024-01-03T00:00:00Z,gcp,us-central1,a2-highgpu-1g,0.7,0.2,listed,"
        + "gpu_cost_not_included\n"
        + "2024-01-03T00:00:00Z,aws,us-east-1,p5.48xlarge,98.32,35.0,absent,\n"
    )
    (tmp_path / "types.csv").write_text(TYPES)
    (tmp_path / "advisor.csv").write_text(ADVISOR)
    return {
        "price_files": [str(prices)],
        "instance_types_file": str(tmp_path / "types.csv"),
        "advisor_file": str(tmp_path / "advisor.csv"),
        "start": "2024-01-01T00:00:00Z",
        "end": "2024-01-04T00:00:00Z",
        "speed": 86400,  # one recorded day per real second
    }


def prices_at(source: object, seconds: float) -> dict[tuple[str, str], float]:
    quotes = source.fetch_prices(since=None, now=T0 + timedelta(seconds=seconds))  # type: ignore[attr-defined]
    return {
        (q.offer.provider.value + ":" + q.offer.instance_type, q.offer.market.value): q.usd_per_hour
        for q in quotes
    }


def test_the_first_call_plays_the_start_of_the_recording(files: dict[str, str]) -> None:
    source = build("replay", files, timeout=5)
    assert prices_at(source, 0) == {
        ("aws:p5.48xlarge", "on-demand"): 98.32,
        ("aws:p5.48xlarge", "spot"): 40.0,
    }


def test_time_runs_at_the_configured_speed(files: dict[str, str]) -> None:
    source = build("replay", files, timeout=5)
    prices_at(source, 0)
    assert prices_at(source, 1.5)[("aws:p5.48xlarge", "spot")] == 35.0


def test_an_uncertain_on_demand_price_is_dropped_but_its_spot_kept(files: dict[str, str]) -> None:
    source = build("replay", files, timeout=5)
    prices_at(source, 0)
    seen = prices_at(source, 1.5)
    assert ("azure:Standard_X", "spot") in seen
    assert ("azure:Standard_X", "on-demand") not in seen


def test_a_price_without_the_gpu_is_skipped_and_an_absent_series_disappears(
    files: dict[str, str],
) -> None:
    source = build("replay", files, timeout=5)
    prices_at(source, 0)
    seen = prices_at(source, 2.5)
    assert not any(key.startswith("gcp:") for key, _ in seen)
    assert ("aws:p5.48xlarge", "spot") not in seen


def test_the_recording_loops(files: dict[str, str]) -> None:
    source = build("replay", files, timeout=5)
    prices_at(source, 0)
    prices_at(source, 2.5)
    assert prices_at(source, 3.2)[("aws:p5.48xlarge", "spot")] == 40.0


def test_quotes_are_observed_now(files: dict[str, str]) -> None:
    source = build("replay", files, timeout=5)
    quotes = source.fetch_prices(since=None, now=T0)
    assert {q.observed_at for q in quotes} == {T0}
    assert {q.source for q in quotes} == {"replay"}


def test_capacity_is_the_newest_advisor_bucket(files: dict[str, str]) -> None:
    source = build("replay", files, timeout=5)
    (signal,) = source.fetch_capacity(now=T0)
    assert signal.value == 1 and signal.observed_at == T0


def test_the_shipped_recording_has_h100_offers_on_two_clouds() -> None:
    source = build("replay", {}, timeout=5)
    quotes = source.fetch_prices(since=None, now=T0)
    types = {(t.provider.value, t.name): t for t in source.fetch_instance_types()}
    h100_clouds = {
        q.offer.provider.value
        for q in quotes
        if (t := types.get((q.offer.provider.value, q.offer.instance_type)))
        and t.accelerator == "H100"
    }
    assert {"aws", "azure"} <= h100_clouds
    assert len(quotes) > 1000


def test_a_bad_price_names_file_line_and_column(files: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "2024-01-01T00:00:00Z,aws,us-east-1,p5.48xlarge,ninety,40.0,listed,\n")
    with pytest.raises(BadPayload) as err:
        build("replay", {**files, "price_files": [str(bad)]}, timeout=5)
    assert str(bad) in str(err.value)
    assert "line 2: ondemand_usd_per_hour" in str(err.value)


def test_unknown_options_are_config_errors(files: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as err:
        build("replay", {**files, "sped": 2}, timeout=5)
    assert err.value.source == "sources.replay.options" and err.value.key == "sped"


def test_end_must_come_after_start(files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="end: must be after start"):
        build("replay", {**files, "end": "2023-01-01T00:00:00Z"}, timeout=5)
