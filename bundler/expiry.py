"""``--expires`` values: a duration after a start time (``90d``, ``12h``, ``2w``) or an absolute
``YYYY-MM-DDTHH:MM:SSZ`` (docs/trust.md, "Expiry")."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from ..installer.formats.timestamps import parse_time
from ..installer.errors import GapshipError, UsageError

_DURATION_RE = re.compile(r"([1-9][0-9]{0,5})([hdw])")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_expires(text: str, *, start: datetime) -> datetime:
    """The expiry ``text`` names, counted from ``start`` when it is a duration; it must be after ``start``."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match:
        return start + int(match.group(1)) * _UNITS[match.group(2)]
    try:
        when = parse_time(text.strip(), what="--expires")
    except GapshipError:
        raise UsageError(f"--expires {text!r} is neither a duration like 90d, 12h, 2w nor a time like "
                         f"2027-01-31T00:00:00Z", subject=text) from None
    if when <= start:
        raise UsageError(f"--expires {text} is not after {start:%Y-%m-%dT%H:%M:%SZ}", subject=text)
    return when
