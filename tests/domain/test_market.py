from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from arbiter.domain.market import (
    CapacityKind,
    CapacitySignal,
    CarbonBasis,
    CarbonReading,
    CarbonUnit,
    InstanceType,
    Market,
    Offer,
    PriceQuote,
)

OFFER = Offer(
    provider="aws", region="us-east-1", zone="use1-az4", instance_type="p5.48xlarge", market="spot"
)
T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)


def test_offer_key_names_every_part() -> None:
    assert OFFER.key == "aws:us-east-1:use1-az4:p5.48xlarge:spot"
    assert OFFER.region_key == "aws:us-east-1"
    regional = OFFER.model_copy(update={"zone": None, "market": Market.ON_DEMAND})
    assert regional.key == "aws:us-east-1:-:p5.48xlarge:on-demand"


def test_values_are_immutable() -> None:
    with pytest.raises(ValidationError):
        OFFER.region = "eu-west-1"  # type: ignore[misc]


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Offer(provider="aws", region="r", instance_type="t", market="spot", colour="red")  # type: ignore[call-arg]


def test_unknown_provider_is_rejected() -> None:
    with pytest.raises(ValidationError, match="'aws', 'gcp' or 'azure'"):
        Offer(provider="awz", region="r", instance_type="t", market="spot")


def test_a_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        PriceQuote(offer=OFFER, usd_per_hour=1.0, observed_at=datetime(2025, 1, 1), source="s")


def test_datetimes_are_normalised_to_utc() -> None:
    cest = timezone(timedelta(hours=2))
    q = PriceQuote(
        offer=OFFER, usd_per_hour=1.0, observed_at=datetime(2025, 6, 2, 11, tzinfo=cest), source="s"
    )
    assert q.observed_at == T0
    assert q.observed_at.tzinfo is UTC


@pytest.mark.parametrize("price", [-0.01, float("nan"), float("inf")])
def test_a_price_must_be_finite_and_not_negative(price: float) -> None:
    with pytest.raises(ValidationError):
        PriceQuote(offer=OFFER, usd_per_hour=price, observed_at=T0, source="s")


def test_an_instance_type_has_accelerator_and_count_together() -> None:
    h100 = InstanceType(
        provider="aws",
        name="p5.48xlarge",
        vcpus=192,
        memory_gib=2048,
        accelerator="H100",
        accelerator_count=8,
        accelerator_memory_gib=80,
    )
    assert h100.accelerator_count == 8
    with pytest.raises(ValidationError, match="together"):
        InstanceType(provider="aws", name="x", vcpus=1, memory_gib=1, accelerator="H100")
    with pytest.raises(ValidationError, match="together"):
        InstanceType(provider="aws", name="x", vcpus=1, memory_gib=1, accelerator_count=1)


def test_a_fractional_gpu_count_is_allowed() -> None:
    g4 = InstanceType(
        provider="gcp",
        name="g4-standard-12",
        vcpus=12,
        memory_gib=45,
        accelerator="RTX-PRO-6000",
        accelerator_count=0.25,
    )
    assert g4.accelerator_count == 0.25


@pytest.mark.parametrize(
    ("kind", "value", "ok"),
    [
        (CapacityKind.PLACEMENT_SCORE, 10, True),
        (CapacityKind.PLACEMENT_SCORE, 11, False),
        (CapacityKind.PLACEMENT_SCORE, 0, False),
        (CapacityKind.INTERRUPTION_BUCKET, 4, True),
        (CapacityKind.INTERRUPTION_BUCKET, 5, False),
        (CapacityKind.QUOTA_GPUS_FREE, 512, True),
        (CapacityKind.QUOTA_GPUS_FREE, -1, False),
    ],
)
def test_capacity_signals_stay_in_their_kinds_range(
    kind: CapacityKind, value: float, ok: bool
) -> None:
    def build() -> CapacitySignal:
        return CapacitySignal(
            provider="aws", region="us-east-1", kind=kind, value=value, observed_at=T0, source="s"
        )

    if ok:
        assert build().value == value
    else:
        with pytest.raises(ValidationError, match="must be within"):
            build()


def test_a_carbon_reading_labels_its_basis_and_unit() -> None:
    r = CarbonReading(zone="DE", valid_at=T0, value=380.0, basis="lifecycle", source="em")
    assert r.unit is CarbonUnit.G_PER_KWH
    assert r.basis is CarbonBasis.LIFECYCLE
    with pytest.raises(ValidationError):
        CarbonReading(zone="DE", valid_at=T0, value=380.0, source="em")  # type: ignore[call-arg]


def test_a_percentile_index_cannot_exceed_100() -> None:
    with pytest.raises(ValidationError, match="percentile"):
        CarbonReading(
            zone="PSCO", valid_at=T0, value=140, unit="percentile", basis="marginal", source="wt"
        )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
    ],
)
def test_durations_read_like_words(text: str | int, seconds: float) -> None:
    from arbiter.domain.values import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "-5s", "1h foo", True])
def test_bad_durations_are_refused(text: str) -> None:
    from arbiter.domain.values import parse_duration

    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "got"),
    [([1, "s"], "a list"), ({"minutes": 5}, "a table"), (None, "null"), (True, "a boolean")],
)
def test_a_duration_of_the_wrong_type_is_a_value_error_saying_what_it_got(
    value: object, got: str
) -> None:
    from arbiter.domain.values import parse_duration

    with pytest.raises(ValueError, match=f"expected a duration like '30s'.*got .*{got}"):
        parse_duration(value)  # type: ignore[arg-type]
