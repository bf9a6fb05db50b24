"""Building blocks shared by every domain value: an immutable, validated base model
and a UTC-aware datetime type.

A value is validated when it is built; once built it cannot change. Datetimes must
carry a timezone (a naive datetime is an error, never silently taken as local time)
and are normalised to UTC.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware datetime, normalised to UTC. Naive datetimes are rejected."""


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Finite = Annotated[float, AfterValidator(_finite)]
"""A float that is neither NaN nor infinite."""


class Value(BaseModel):
    """Base of every domain value: frozen, closed (unknown fields are errors), validated."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)
