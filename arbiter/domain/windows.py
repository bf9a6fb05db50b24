"""Blackout windows: when planned (non-urgent) migrations must not start.

A window is written ``"<days> <HH:MM>-<HH:MM> <IANA time zone>"``, e.g.
``"Mon-Fri 08:00-18:00 Europe/Berlin"`` or ``"Sat,Sun 00:00-24:00 UTC"``. Days are a
range (``Mon-Fri``), a list (``Mon,Wed``) or ``daily``; a window that ends before it
starts runs past midnight (``22:00-06:00``) and belongs to the day it starts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PATTERN = re.compile(
    r"^\s*(?P<days>[A-Za-z,\-]+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})"
    r"\s+(?P<tz>\S+)\s*$"
)


@dataclass(frozen=True)
class Window:
    text: str
    days: frozenset[int]
    """0 = Monday."""
    start: time
    end_minutes: int
    """Minutes after midnight; 1440 for 24:00."""
    zone: ZoneInfo

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(self.zone)
        minutes = local.hour * 60 + local.minute
        start = self.start.hour * 60 + self.start.minute
        if start < self.end_minutes:
            return local.weekday() in self.days and start <= minutes < self.end_minutes
        # past midnight: today's late part, or yesterday's window spilling over
        yesterday = (local - timedelta(days=1)).weekday()
        return (local.weekday() in self.days and minutes >= start) or (
            yesterday in self.days and minutes < self.end_minutes
        )


def _minutes(text: str, *, allow_24: bool) -> int:
    hours, _, mins = text.partition(":")
    h, m = int(hours), int(mins)
    if m > 59 or h > 24 or (h == 24 and (m or not allow_24)):
        raise ValueError(f"{text!r} is not a time of day (HH:MM)")
    return h * 60 + m


def _days(text: str) -> frozenset[int]:
    text = text.lower()
    if text in ("daily", "every-day", "all"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first[:3] not in DAYS or (last and last[:3] not in DAYS):
            raise ValueError(f"unknown day in {part!r}; use Mon..Sun, ranges or lists")
        a = DAYS.index(first[:3])
        b = DAYS.index(last[:3]) if last else a
        i = a
        while True:
            out.add(i)
            if i == b:
                break
            i = (i + 1) % 7
    return frozenset(out)


def parse_window(text: str) -> Window:
    """A window, or ValueError saying what is wrong with the text."""
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(
            f"expected a window like 'Mon-Fri 08:00-18:00 Europe/Berlin', got {text!r}"
        )
    try:
        zone = ZoneInfo(match["tz"])
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {match['tz']!r} (use an IANA name)") from None
    start = _minutes(match["start"], allow_24=False)
    end = _minutes(match["end"], allow_24=True)
    if start == end:
        raise ValueError(f"window {text!r} is empty (start equals end)")
    return Window(
        text=text,
        days=_days(match["days"]),
        start=time(start // 60, start % 60),
        end_minutes=end,
        zone=zone,
    )


def in_blackout(windows: tuple[str, ...], at: datetime) -> str | None:
    """The first window containing ``at``, or None."""
    for text in windows:
        if parse_window(text).contains(at):
            return text
    return None
