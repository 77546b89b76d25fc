"""What a host remembers between installs (docs/trust.md, "Host state"): per bundle name the highest
version installed (the anti-rollback floor), the newest signing time accepted (to notice a clock set
back), and a short log of every override (``--allow-reinstall`` / ``--allow-downgrade``) and floor reset.

It lives in ``PREFIX/.gapship/state.json`` (bundle names cannot start with a dot, so it never collides
with an install), is written atomically and fsynced under ``PREFIX/.gapship/state.lock``, and a file
that cannot be read or parsed is refused rather than treated as empty: losing it would reset every floor.
This module stores and loads; :mod:`gapship.installer.trust` decides.

Each bundle's entry and each event also keep the hash of the receipt of the install that wrote them and
the references of its audit intent record (docs/trust.md, "Host state"): the receipt hash tells an
install that was interrupted between raising the floor and switching ``current`` from a finished one,
and the references let ``gapship audit verify`` notice records cut off the end of the log.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from .atomic import atomic_write, read_small
from .strict import make_dirs
from ..formats.timestamps import parse_time
from ..errors import GapshipError, HostError
from ..kit import Malformed, canonical_json, parse_json

STATE_DIR = ".gapship"
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
STATE_VERSION = 1
MAX_STATE_BYTES = 8 * 1024 * 1024
MAX_EVENTS = 200  # the oldest events are dropped beyond this


AuditRefs = tuple[Mapping[str, object], ...]  # {"log", "seq", "record"} each (host/audit.py's AuditRef)


@dataclass(frozen=True)
class BundleRecord:
    highest_version: str
    manifest_digest: str
    recorded_at: str
    receipt: str | None = None  # sha256 of the receipt.json of the install that wrote this entry
    audit: AuditRefs = ()  # that install's audit intent record, in each log it went to

    def to_dict(self) -> dict[str, object]:
        return {"highest_version": self.highest_version, "manifest_digest": self.manifest_digest,
                "recorded_at": self.recorded_at, "receipt": self.receipt, "audit": [dict(a) for a in self.audit]}


@dataclass(frozen=True)
class StateSnapshot:
    """The state as read at one moment; empty on a fresh host."""

    bundles: Mapping[str, BundleRecord] = field(default_factory=dict)
    newest_accepted: str | None = None
    events: tuple[Mapping[str, Any], ...] = ()

    def floor(self, name: str) -> str | None:
        record = self.bundles.get(name)
        return record.highest_version if record else None

    def time_only(self) -> StateSnapshot:
        """The newest accepted time without the floors: for a check before the install lock, when the
        floor is decided under it, against the prefix too (installer/deploy/install.py)."""
        return StateSnapshot(newest_accepted=self.newest_accepted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state_version": STATE_VERSION,
            "bundles": {name: r.to_dict() for name, r in sorted(self.bundles.items())},
            "newest_accepted": self.newest_accepted,
            "events": list(self.events),
        }


@dataclass(frozen=True)
class Installed:
    """What an install adds to the state (the floor is computed by :func:`gapship.installer.trust.installed_record`)."""

    name: str
    version: str
    floor: str
    manifest_digest: str
    created: str
    at: str
    by: str
    overrides: tuple[str, ...] = ()
    floor_reset: str | None = None  # the floor a root-signed reset replaced, if one applied
    receipt: str | None = None  # sha256 of the install's receipt.json
    audit: AuditRefs = ()  # the install's audit intent record(s)


class HostState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def for_prefix(cls, prefix: Path) -> HostState:
        return cls(prefix / STATE_DIR)

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def load(self) -> StateSnapshot:
        data = read_small(self.path, MAX_STATE_BYTES, what="host state")
        if data is None:
            return StateSnapshot()
        return _parse(data, str(self.path))

    def record(self, installed: Installed) -> None:
        """Merge one install into the state file, under the state lock."""
        with self._locked():
            current = self.load()
            bundles = dict(current.bundles)
            bundles[installed.name] = BundleRecord(installed.floor, installed.manifest_digest, installed.at,
                                                   receipt=installed.receipt, audit=installed.audit)
            newest = _latest(current.newest_accepted, installed.created)
            events = list(current.events)
            if installed.overrides or installed.floor_reset:
                events.append(_event(installed))
            snapshot = StateSnapshot(bundles=bundles, newest_accepted=newest, events=tuple(events[-MAX_EVENTS:]))
            atomic_write(self.path, canonical_json(snapshot.to_dict()) + b"\n")

    def check_writable(self) -> None:
        """Refuse now (exit 7) when the state could not be written later: an install must not get as
        far as making a version visible only to find that it cannot raise the floor. A state directory
        that does not exist yet is left for :meth:`record` to make (a refused first install leaves none)."""
        if not self.directory.is_dir():
            return
        with self._locked():
            try:
                fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{STATE_FILE}.probe-")
                os.close(fd)
                os.unlink(tmp)
            except OSError as e:
                raise HostError(f"cannot write the host state in {self.directory}: {e.strerror}",
                                subject=str(self.directory)) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            make_dirs(self.directory)  # 0755 whatever the umask (host/strict.py refuses a writable one)
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise HostError(f"cannot open {self.directory / LOCK_FILE}: {e.strerror}", subject=str(self.directory)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for one read-merge-write: short, so wait for it
            yield
        finally:
            os.close(fd)


def _event(installed: Installed) -> dict[str, Any]:
    event: dict[str, Any] = {"at": installed.at, "by": installed.by, "bundle": installed.name,
                             "version": installed.version, "manifest_digest": installed.manifest_digest,
                             "overrides": list(installed.overrides)}
    if installed.floor_reset:
        event["floor_reset_from"] = installed.floor_reset
    event["audit"] = [dict(a) for a in installed.audit]
    return event


def _latest(a: str | None, b: str) -> str:
    if a is None:
        return b
    return a if parse_time(a, what="newest_accepted") >= parse_time(b, what="created") else b


def _parse(data: bytes, where: str) -> StateSnapshot:
    hint = "restore it from a backup; deleting it would drop every anti-rollback floor"
    try:
        raw = parse_json(data, source=where, error=Malformed, invalid="{detail}")
        if raw.get("state_version") != STATE_VERSION:
            raise ValueError(f"state_version {raw.get('state_version')!r} is not {STATE_VERSION}")
        bundles = {str(name): _record(rec) for name, rec in raw["bundles"].items()}
        newest = raw.get("newest_accepted")
        if newest is not None:
            parse_time(newest, what="newest_accepted")
        events = tuple(e for e in raw.get("events", []) if isinstance(e, dict))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, InvalidVersion, GapshipError) as e:
        raise HostError(f"host state {where} is unreadable ({e}); refusing to guess the anti-rollback floors",
                        subject=where, hint=hint) from None
    return StateSnapshot(bundles=bundles, newest_accepted=newest, events=events)


def _record(raw: Any) -> BundleRecord:
    version = str(raw["highest_version"])
    Version(version)  # raises InvalidVersion on a damaged entry
    receipt = raw.get("receipt")
    audit = raw.get("audit", [])
    return BundleRecord(version, str(raw["manifest_digest"]), str(raw["recorded_at"]),
                        receipt=receipt if isinstance(receipt, str) else None,
                        audit=tuple(a for a in audit if isinstance(a, dict)) if isinstance(audit, list) else ())
