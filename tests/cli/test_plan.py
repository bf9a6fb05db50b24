"""``arbiter plan``: what the daemon would do now, read-only."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from arbiter.cli.main import Context, cli
from arbiter.domain.market import InstanceType, Offer, PriceQuote
from arbiter.domain.workloads import Placement
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from tests.test_reconcile import POLICY, WORKLOAD

NOW = datetime.now(UTC)
WEST4 = Offer(
    provider="gcp", region="europe-west4", instance_type="g2-standard-4", market="on-demand"
)
WEST1 = Offer(
    provider="gcp", region="europe-west1", instance_type="g2-standard-4", market="on-demand"
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``arbiter plan`` configures logging for its process; in-process CLI runs must
    not leave that set for the tests after them."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Store]:
    for name in list(os.environ):
        if name.startswith("ARBITER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "policies").mkdir()
    (tmp_path / "workloads").mkdir()
    (tmp_path / "policies" / "eu.yaml").write_text(POLICY)
    (tmp_path / "workloads" / "chat.yaml").write_text(WORKLOAD)
    url = f"sqlite:///{tmp_path / 'arbiter.db'}"
    (tmp_path / "config.toml").write_text(
        f'[database]\nurl = "{url}"\n[daemon]\nmode = "recommend"\n'
        f'[policies]\npaths = ["{tmp_path / "policies"}"]\n'
        f'workloads = ["{tmp_path / "workloads"}"]\n'
        '[sources.test]\nkind = "replay"\n'
    )
    upgrade(url)
    store = Store(make_engine(url))
    store.instance_types.upsert(
        [
            InstanceType(
                provider="gcp",
                name="g2-standard-4",
                vcpus=4,
                memory_gib=16,
                accelerator="L4",
                accelerator_count=1,
                accelerator_memory_gib=24,
            )
        ],
        now=NOW,
    )
    store.prices.record(
        [
            PriceQuote(offer=WEST4, usd_per_hour=1.0, observed_at=NOW, source="test"),
            PriceQuote(offer=WEST1, usd_per_hour=0.5, observed_at=NOW, source="test"),
        ]
    )
    return tmp_path, store


def plan(root: Path, *args: str) -> dict[str, object]:
    result = CliRunner().invoke(
        cli, ["--config", str(root / "config.toml"), "plan", "-o", "json", *args],
        obj=Context(None, None),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_new_workload_is_planned_to_be_placed(site: tuple[Path, Store]) -> None:
    root, _ = site
    body = plan(root)
    (move,) = body["moves"]  # type: ignore[misc]
    assert move["kind"] == "place" and move["target"] == [{"offer": WEST1.key, "replicas": 2}]
    assert body["mode"] == "recommend"


def test_a_cheaper_region_is_planned_as_a_move_with_its_reason(site: tuple[Path, Store]) -> None:
    root, store = site
    from arbiter.policy_loader import load_workloads

    (chat,) = load_workloads([root / "workloads"]).workloads
    store.workloads.upsert(chat, now=NOW)
    store.workloads.set_placements(
        "chat", [Placement(workload="chat", offer=WEST4, replicas=2)], now=NOW
    )
    body = plan(root)
    (move,) = body["moves"]  # type: ignore[misc]
    assert move["kind"] == "move" and move["reason"].startswith("saves $1.00/h (50.0%)")


def test_plan_writes_nothing(site: tuple[Path, Store]) -> None:
    root, store = site
    plan(root)
    assert store.decisions.recent() == []
    assert store.migrations.recent() == []
    assert store.pending.all() == {}


@pytest.mark.parametrize(
    ("mode", "footer"),
    [
        ("recommend", "Mode recommend: the daemon logs these moves and starts none."),
        ("observe", "Mode observe: the daemon records decisions and plans none of these moves."),
        ("enforce", None),
    ],
)
def test_the_table_says_what_the_daemon_does_with_the_plan_in_its_mode(
    site: tuple[Path, Store], mode: str, footer: str | None
) -> None:
    root, _ = site
    config = root / "config.toml"
    config.write_text(config.read_text().replace('mode = "recommend"', f'mode = "{mode}"'))
    result = CliRunner().invoke(
        cli, ["--config", str(config), "plan"], obj=Context(None, None)
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    last = result.stdout.rstrip().splitlines()[-1]
    if footer is None:
        assert not last.startswith("Mode ")
    else:
        assert last == footer


def test_a_hard_violation_past_drain_within_is_listed_and_the_memory_left_as_it_was(
    site: tuple[Path, Store],
) -> None:
    root, store = site
    from datetime import timedelta

    from arbiter.policy_loader import load_workloads

    (chat,) = load_workloads([root / "workloads"]).workloads
    store.workloads.upsert(chat, now=NOW)
    us = Offer(provider="gcp", region="us-east4", instance_type="g2-standard-4", market="on-demand")
    store.workloads.set_placements(
        "chat", [Placement(workload="chat", offer=us, replicas=2)], now=NOW
    )
    since = NOW - timedelta(hours=2)
    store.violations.replace({"chat": since})
    body = plan(root)
    (overdue,) = body["overdue"]  # type: ignore[misc]
    assert overdue["workload"] == "chat" and overdue["since"] == since.isoformat()
    assert overdue["deadline"] == (since + timedelta(hours=1)).isoformat()  # default 1 h
    assert overdue["detail"].startswith(f"{us.key}: eu-residency: ")
    assert [m["kind"] for m in body["moves"]] == ["evacuate"]  # type: ignore[attr-defined]
    assert store.violations.all() == {"chat": since}

    result = CliRunner().invoke(
        cli, ["--config", str(root / "config.toml"), "plan"], obj=Context(None, None)
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = lines.index("!! chat  hard violation past on_hard_violation.drain_within")
    assert lines[at + 1].startswith(
        f"      # since {since:%Y-%m-%d %H:%MZ}, to be drained by "
        f"{since + timedelta(hours=1):%Y-%m-%d %H:%MZ}: {us.key}: eu-residency: "
    )
    assert "1 hard violation(s) past drain_within." in lines[-2]


def test_replicas_the_spec_asks_for_are_planned_as_a_scale_up(site: tuple[Path, Store]) -> None:
    root, store = site
    from arbiter.policy_loader import load_workloads

    (chat,) = load_workloads([root / "workloads"]).workloads
    store.workloads.upsert(chat, now=NOW)
    store.workloads.set_placements(
        "chat", [Placement(workload="chat", offer=WEST4, replicas=1)], now=NOW
    )
    body = plan(root)
    (move,) = body["moves"]  # type: ignore[misc]
    assert move["kind"] == "scale-up"
    assert move["reason"].startswith("the workload asks for 2 replicas, 1 run")
    assert move["target"] == [
        {"offer": WEST1.key, "replicas": 1},
        {"offer": WEST4.key, "replicas": 1},
    ]
    result = CliRunner().invoke(
        cli, ["--config", str(root / "config.toml"), "plan"], obj=Context(None, None)
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "+ chat  scale-up" in lines
    assert f"    + {WEST1.key} ×1" in lines
    assert any(
        line.startswith("Plan: 0 to place, 1 to scale up, 0 to scale down") for line in lines
    )


def run_quota_out_on_west1(root: Path, store: Store) -> None:
    """chat runs its two replicas on europe-west1, the cheaper region, and they use up
    the L4 quota there: GCP reports limit − usage, 0 GPUs left."""
    from arbiter.domain.market import CapacityKind, CapacitySignal
    from arbiter.policy_loader import load_workloads

    (chat,) = load_workloads([root / "workloads"]).workloads
    store.workloads.upsert(chat, now=NOW)
    store.workloads.set_placements(
        "chat", [Placement(workload="chat", offer=WEST1, replicas=2)], now=NOW
    )
    store.capacity.record(
        [
            CapacitySignal(
                provider="gcp",
                region="europe-west1",
                instance_type="g2-standard-4",
                kind=CapacityKind.QUOTA_GPUS_FREE,
                value=0,
                observed_at=NOW,
                source="test",
            )
        ]
    )


def test_the_plan_leaves_a_workload_on_the_quota_its_own_replicas_use(
    site: tuple[Path, Store],
) -> None:
    root, store = site
    run_quota_out_on_west1(root, store)
    body = plan(root)
    assert body["moves"] == [] and body["held"] == []


def test_explain_on_the_store_places_a_workload_on_the_quota_its_own_replicas_use(
    site: tuple[Path, Store],
) -> None:
    """explain decides as the daemon does: against the store's fleet."""
    root, store = site
    run_quota_out_on_west1(root, store)
    result = CliRunner().invoke(
        cli, ["--config", str(root / "config.toml"), "explain", "chat", "-o", "json"],
        obj=Context(None, None),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["placed"] and body["unplaceable_reasons"] == []
    (region,) = [r for r in body["regions"] if r["status"] == "placed"]
    assert region["region"] == "gcp:europe-west1" and region["replicas"] == 2
