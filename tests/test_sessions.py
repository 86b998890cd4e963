"""Market hours: the sessions of US equities and NSE, in their own time zones."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aetherion.ingest.sessions import next_open_ms, session_open


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("venue", "when", "expected"),
    [
        # US regular session, EDT (UTC-4) and EST (UTC-5)
        ("us", "2013-10-08T09:29:59.999-04:00", False),
        ("us", "2013-10-08T09:30:00-04:00", True),
        ("us", "2013-10-08T15:59:59.999-04:00", True),
        ("us", "2013-10-08T16:00:00-04:00", False),
        ("us", "2024-01-16T14:30:00+00:00", True),  # 09:30 EST
        ("us", "2024-01-16T14:29:00+00:00", False),
        ("us", "2024-07-16T13:30:00+00:00", True),  # 09:30 EDT
        ("us", "2013-10-12T12:00:00-04:00", False),  # Saturday
        ("us", "2013-10-13T12:00:00-04:00", False),  # Sunday
        # NSE, IST (UTC+5:30, no daylight saving)
        ("nse", "2024-08-08T09:14:59+05:30", False),
        ("nse", "2024-08-08T09:15:00+05:30", True),
        ("nse", "2024-08-08T15:29:59+05:30", True),
        ("nse", "2024-08-08T15:30:00+05:30", False),
        ("nse", "2024-08-08T03:45:00+00:00", True),
        ("nse", "2024-08-10T11:00:00+05:30", False),  # Saturday
        ("crypto", "2024-08-10T03:00:00+00:00", True),
    ],
)
def test_session_open(venue: str, when: str, expected: bool) -> None:
    assert session_open(venue, ms(when)) is expected


def test_next_open_skips_the_weekend() -> None:
    friday_evening = ms("2013-10-11T17:00:00-04:00")
    assert next_open_ms("us", friday_evening) == ms("2013-10-14T09:30:00-04:00")
    assert next_open_ms("nse", ms("2024-08-08T08:00:00+05:30")) == ms("2024-08-08T09:15:00+05:30")
    now = ms("2024-08-08T10:00:00+05:30")
    assert next_open_ms("nse", now) == now
    assert next_open_ms("crypto", friday_evening) == friday_evening
