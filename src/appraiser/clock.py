"""What time it is, and stored times put on one footing: every time the project keeps is UTC.

PostgreSQL hands stored times back aware and SQLite naive; `utc` makes either comparable with
`now()`, so no module has to remember which database it is reading.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import overload


def now() -> datetime:
    """The current time, aware, in UTC (stored with every batch, appraisal, job and feedback)."""
    return datetime.now(UTC)


def today() -> date:
    """Today's date in UTC (the latest day a labelled stone may say it was appraised)."""
    return now().date()


@overload
def utc(moment: datetime) -> datetime: ...


@overload
def utc(moment: None) -> None: ...


@overload
def utc(moment: datetime | None) -> datetime | None: ...


def utc(moment: datetime | None) -> datetime | None:
    """`moment` as an aware time in UTC (None stays None). A naive time is taken to be UTC
    already: that is how SQLite returns what was stored in UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
