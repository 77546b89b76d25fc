"""Removing installed versions: ``gapship remove`` and ``gapship prune`` (docs/site-admin.md,
"Removing old versions").

Rules, each for a reason:

- never ``current`` (the service loads it) and never a version directory gapship did not complete
  (no receipt: not ours to judge; an interrupted install's is the next install's to clear);
- never anything a kept version still needs: every complete version is complete on its own (a delta's
  files taken from its base are reflinks, hard links or copies, never references), so what is still
  needed is only the base of a delta being installed right now, and that install holds the lock;
- under the bundle name's install lock, so a remove and an install of the same name never overlap:
  the second one refuses ("target busy", exit 7) and nothing is half-done;
- on the record: the audit intent record is durable before anything is touched, the outcome follows;
- the anti-rollback floor stays where it was: it is kept in the host state, not in the directories. A
  version above the state's floor (a lost or older state) is refused, since removing it would lower
  the floor the prefix itself holds (:mod:`.floor`);
- atomic: the directory is first renamed to ``.removing-<version>-<hex>``, so nothing half-removed is
  ever visible under its version name, then removed; an interrupted removal is finished by the next
  ``remove``, ``prune`` or install of that name. Only the version's own directories are made writable;
  files are only unlinked, never chmod'ed (a hard-linked file's inode is shared with another version).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from ..errors import PolicyError, UsageError
from ..formats.manifest import check_name
from ..host.atomic import fsync_dir
from ..host.audit import AuditRef
from ..host.fs import remove_tree
from ..host.state import STATE_DIR, HostState
from ..host.strict import check_prefix
from .delta import receipt_digest
from .install import CURRENT, RECEIPT, REMOVING_PREFIX, active_version, as_host_error, locked


@dataclass(frozen=True)
class Removal:
    """One version about to be removed: what the audit intent record says."""

    name: str
    version: str
    manifest_digest: str | None
    prefix: str  # absolute
    current: str | None

    def to_dict(self) -> dict[str, object]:
        return {"bundle": {"name": self.name, "version": self.version}, "manifest_digest": self.manifest_digest,
                "prefix": self.prefix, "current": self.current}

    @property
    def message(self) -> str:
        return f"about to remove {self.name} {self.version} under {self.prefix} (current {self.current or 'none'})"


RecordRemoval = Callable[[Removal], Sequence[AuditRef]]


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[tuple[str, str], ...]  # (name, version)
    kept: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, object]:
        return {"removed": [{"name": n, "version": v} for n, v in self.removed],
                "kept": [{"name": n, "version": v} for n, v in self.kept]}


def remove(prefix: Path, name: str, version: str, *, state: HostState | None = None,
           record: RecordRemoval | None = None) -> PruneResult:
    """Remove ``PREFIX/<name>/<version>`` under the rules of the module docstring, or raise."""
    check_name(name, "bundle name")
    home = _home(prefix, name)
    with locked(home), as_host_error(home):
        finish_removals(home)
        _remove_one(prefix, home, name, version, state=state, record=record)
        return PruneResult(removed=((name, version),), kept=tuple((name, v) for v in complete_versions(home)))


def prune(prefix: Path, *, name: str | None = None, keep: int = 2, state: HostState | None = None,
          record: RecordRemoval | None = None) -> PruneResult:
    """Keep the ``keep`` newest complete versions of each bundle name (of ``name`` only, if given) and
    ``current``; remove the others, oldest first, each as :func:`remove` does."""
    if keep < 1:
        raise UsageError(f"--keep {keep}: keep at least 1 version", subject="--keep")
    names = [name] if name is not None else _bundle_names(prefix)
    removed: list[tuple[str, str]] = []
    kept: list[tuple[str, str]] = []
    for n in names:
        check_name(n, "bundle name")
        home = _home(prefix, n)
        with locked(home), as_host_error(home):
            finish_removals(home)
            current = active_version(home)
            versions = complete_versions(home)  # newest first
            keeping = set(versions[:keep]) | ({current} if current else set())
            for v in reversed(versions):
                if v not in keeping:
                    _remove_one(prefix, home, n, v, state=state, record=record)
                    removed.append((n, v))
            kept += [(n, v) for v in versions if v in keeping]
    return PruneResult(removed=tuple(removed), kept=tuple(kept))


def complete_versions(home: Path) -> list[str]:
    """The version directories under ``home`` that hold a receipt, newest (PEP 440) first."""
    found: list[tuple[Version, str]] = []
    for entry in os.scandir(home):
        if entry.name.startswith(".") or entry.name == CURRENT or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            parsed = Version(entry.name)
        except InvalidVersion:
            continue
        if os.path.isfile(os.path.join(entry.path, RECEIPT)):
            found.append((parsed, entry.name))
    return [v for _, v in sorted(found, reverse=True)]


def finish_removals(home: Path) -> None:
    """Called under the lock: finish what an interrupted removal left (already out of view)."""
    for entry in home.iterdir():
        if entry.name.startswith(REMOVING_PREFIX):
            remove_tree(entry)


def _home(prefix: Path, name: str) -> Path:
    home = prefix / name
    check_prefix(prefix, home=home, state_dir=prefix / STATE_DIR)
    if not home.is_dir() or home.is_symlink():
        raise UsageError(f"no bundle {name} is installed at {prefix}", subject=name)
    return home


def _bundle_names(prefix: Path) -> list[str]:
    if not prefix.is_dir():
        raise UsageError(f"prefix {prefix} does not exist", subject=str(prefix))
    return sorted(e.name for e in os.scandir(prefix) if not e.name.startswith(".")
                  and e.is_dir(follow_symlinks=False) and os.path.lexists(os.path.join(e.path, ".lock")))


def _remove_one(prefix: Path, home: Path, name: str, version: str, *, state: HostState | None,
                record: RecordRemoval | None) -> None:
    target = home / version
    if target.name != version or version in ("", ".", "..") or "/" in version:
        raise UsageError(f"{version!r} is not a version", subject=version)
    current = active_version(home)
    if version == current:
        raise PolicyError(f"{name} {version} is current at {prefix}; switch to another version first",
                          subject=str(target))
    if target.is_symlink() or not target.is_dir():
        raise UsageError(f"{name} {version} is not installed at {prefix}", subject=str(target))
    if not (target / RECEIPT).is_file():
        raise PolicyError(f"{target} has no receipt: not a version gapship completed; refusing to remove it",
                          subject=str(target))
    _check_floor_kept(state, name, version, target)
    if record is not None:
        record(Removal(name=name, version=version, manifest_digest=receipt_digest(target),
                       prefix=os.path.abspath(prefix), current=current))
    hidden = home / f"{REMOVING_PREFIX}{version}-{secrets.token_hex(6)}"
    os.rename(target, hidden)  # out of view in one step: never half-removed under its name
    fsync_dir(home)
    remove_tree(hidden)  # directories made writable, files only unlinked (host/fs.py)
    fsync_dir(home)


def _check_floor_kept(state: HostState | None, name: str, version: str, target: Path) -> None:
    """The state must already hold a floor at or above ``version``: then removing it lowers nothing."""
    if state is None:
        return
    floor = state.load().floor(name)
    if floor is None or Version(floor) < Version(version):
        raise PolicyError(f"removing {name} {version} would lower the anti-rollback floor: the host state "
                          f"{state.path} records {floor or 'none'}; install a version again first", subject=str(target))
