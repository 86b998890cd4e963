"""Market hours per venue: when a quiet stream is expected and when it means a dead socket.

- ``us``: the regular session, 09:30-16:00 America/New_York, Monday to Friday.
- ``nse``: the normal market, 09:15-15:30 Asia/Kolkata, Monday to Friday.
- ``crypto``: always open.

Exchange holidays are not known: no reference table of them ships with the project, so a holiday
on a weekday counts as open (the watchdog then reconnects a silent stream now and then, which is
harmless). Pre-market and after-hours trading on US venues is outside the session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

__all__ = ["SESSIONS", "Session", "next_open_ms", "session_open"]


@dataclass(frozen=True, slots=True)
class Session:
    """A daily trading session in the venue's own time zone, on weekdays."""

    tz: ZoneInfo
    open: time
    close: time

    def is_open(self, now_ms: int) -> bool:
        local = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(self.tz)
        return local.weekday() < 5 and self.open <= local.time() < self.close

    def next_open_ms(self, now_ms: int) -> int:
        """Start of the next session at or after ``now_ms`` (``now_ms`` when open)."""
        if self.is_open(now_ms):
            return now_ms
        local = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(self.tz)
        day = local.date()
        if local.time() >= self.open:
            day += timedelta(days=1)
        while day.weekday() >= 5:
            day += timedelta(days=1)
        start = datetime.combine(day, self.open, self.tz)
        return int(start.timestamp() * 1000)


SESSIONS: Final[dict[str, Session]] = {
    "us": Session(ZoneInfo("America/New_York"), time(9, 30), time(16, 0)),
    "nse": Session(ZoneInfo("Asia/Kolkata"), time(9, 15), time(15, 30)),
}


def session_open(venue: str, now_ms: int) -> bool:
    """Whether ``venue`` is in its trading session at ``now_ms`` (UTC epoch ms).

    Venues without a session (``crypto``, and any unknown one) are always open.
    """
    session = SESSIONS.get(venue)
    return session is None or session.is_open(now_ms)


def next_open_ms(venue: str, now_ms: int) -> int:
    """When ``venue`` next opens (``now_ms`` itself while it is open)."""
    session = SESSIONS.get(venue)
    return now_ms if session is None else session.next_open_ms(now_ms)
