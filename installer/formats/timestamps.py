"""UTC timestamps as gapship writes them: ``YYYY-MM-DDTHH:MM:SSZ`` (docs/format.md, "created", "expires")."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from ..errors import UnsafeContentError

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def format_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime(TIME_FORMAT)


def parse_time(stamp: str, *, what: str) -> datetime:
    """The aware UTC datetime of ``stamp``; refuse anything else (a bad date is a malformed document)."""
    if not TIME_RE.fullmatch(stamp):
        raise UnsafeContentError(f"{what} {stamp!r} is not YYYY-MM-DDTHH:MM:SSZ", subject=what)
    try:
        return datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise UnsafeContentError(f"{what} {stamp!r} is not a real date and time", subject=what) from None
