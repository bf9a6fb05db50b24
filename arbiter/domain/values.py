"""Building blocks shared by every domain value: an immutable, validated base model
and a UTC-aware datetime type.

A value is validated when it is built; once built it cannot change. Datetimes must
carry a timezone (a naive datetime is an error, never silently taken as local time)
and are normalised to UTC.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
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


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _kind(value: object) -> str:
    """What a value that is no duration is, as a config or policy file writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration written ``90``, ``"90s"``, ``"30m"``, ``"1h30m"`` or ``"2d"``.

    Raises ValueError naming the accepted forms — for any input, also a list, a table or
    null from a config file (pydantic reports a ValueError from a validator as a
    validation error; any other exception would escape as a traceback).
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"expected a duration like '30s', '5m', '1h30m', got {_kind(text)}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        spec = text.strip().lower()
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", spec)
        if not spec or "".join(n + u for n, u in parts) != spec.replace(" ", ""):
            raise ValueError(f"expected a duration like '30s', '5m', '1h30m', got {text!r}")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a finite number of seconds ≥ 0, got {text!r}")
    return seconds
