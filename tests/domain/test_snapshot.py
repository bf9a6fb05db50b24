"""A market snapshot's id is a hash of its content, the same bytes whichever way it is
written."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from arbiter.domain.market import CarbonBasis, Market, Offer, Provider
from arbiter.domain.snapshot import (
    _OFFER_STATE_JSON,
    MarketSnapshot,
    OfferState,
    ZoneCarbon,
    content_id,
)

SNAPSHOT = Path(__file__).parents[1] / "data" / "snapshots" / "eu-small.json"

names = st.text(min_size=1, max_size=12).map(str.strip).filter(bool)
numbers = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5))]),
)
offers = st.builds(
    Offer,
    provider=st.sampled_from(Provider),
    region=names,
    zone=st.none() | names,
    instance_type=names,
    market=st.sampled_from(Market),
)
offer_states = st.builds(
    OfferState,
    offer=offers,
    usd_per_hour=numbers,
    seen_at=times,
    stale=st.booleans(),
    accelerator=st.none() | names,
    accelerator_count=numbers | st.integers(0, 16),
    accelerator_memory_gib=st.none() | numbers.filter(lambda x: x > 0),
    interruption_bucket=st.none() | st.floats(0, 4) | st.integers(0, 4),
    placement_score=st.none() | st.floats(1, 10),
    capacity_gpus=st.none() | numbers | st.integers(0, 64),
)
zones = st.builds(
    ZoneCarbon,
    zone=names,
    gco2_per_kwh=numbers,
    basis=st.sampled_from(CarbonBasis),
    valid_at=times,
    source=names,
    stale=st.booleans(),
)


def hashed_dump(offers: tuple[OfferState, ...], carbon: tuple[ZoneCarbon, ...]) -> str:
    body = {
        "offers": [o.model_dump(mode="json") for o in offers],
        "carbon": [c.model_dump(mode="json") for c in carbon],
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@settings(max_examples=300)
@given(st.lists(offer_states, max_size=6), st.lists(zones, max_size=3))
def test_the_id_hashes_the_json_dump_of_the_offers_and_carbon_data(
    offers: list[OfferState], carbon: list[ZoneCarbon]
) -> None:
    assert content_id(offers, carbon) == hashed_dump(tuple(offers), tuple(carbon))


def test_the_id_is_written_from_every_field_of_an_offer_state() -> None:
    written = json.loads(_OFFER_STATE_JSON % (("null",) * _OFFER_STATE_JSON.count("%s")))
    assert written.keys() == OfferState.model_fields.keys()
    assert written["offer"].keys() == Offer.model_fields.keys()


def test_a_snapshot_made_again_from_a_stored_one_has_its_id() -> None:
    stored = MarketSnapshot.model_validate_json(SNAPSHOT.read_text())
    again = MarketSnapshot.make(
        taken_at=stored.taken_at, offers=stored.offers, carbon=stored.carbon
    )
    assert again.id == stored.id == "50da28770899ddcb"


def test_a_state_without_an_accelerator_count_still_makes_a_snapshot() -> None:
    """The field's default is written like every other number (it was the int 0,
    which the fast writer's ``float.__repr__`` refused)."""
    state = OfferState(
        offer=Offer(
            provider=Provider.AWS,
            region="eu-west-1",
            zone=None,
            instance_type="t3.micro",
            market=Market.ON_DEMAND,
        ),
        usd_per_hour=0.01,
        seen_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    snapshot = MarketSnapshot.make(
        taken_at=datetime(2026, 1, 1, tzinfo=UTC), offers=(state,), carbon=()
    )
    assert json.loads(snapshot.model_dump_json())["offers"][0]["accelerator_count"] == 0
