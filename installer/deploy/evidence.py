"""What a prefix says about the audit log (docs/safeguards.md, "Cross-checks").

Each install keeps the reference of its audit intent record (the log's path, the record's sequence
number and line hash) in its ``receipt.json``, and the host state keeps it beside each floor it raised
and each override it logged. :func:`gather_references` reads them all back, so that ``gapship audit
verify`` and ``gapship audit export`` can check that the log still holds every record the prefix
names (:func:`gapship.installer.host.audit.check_references`). This module reads and decides nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Set
from pathlib import Path

from ..errors import UsageError
from ..host.audit import AuditRef, Reference
from ..host.state import HostState
from ..kit import Malformed, parse_json, read_optional
from .install import CURRENT, MAX_RECEIPT_BYTES, RECEIPT

MAX_VERSION_DIRS = 100_000  # receipts read at most per prefix


def gather_references(named: Set[str], explicit: Iterable[Path] = ()) -> tuple[tuple[str, ...], list[Reference]]:
    """The references held by the prefixes ``named`` by the log's install records (skipped when they
    no longer exist) and by the ``explicit`` ones (which must exist); return the prefixes read too."""
    prefixes: dict[str, Path] = {}
    for path in explicit:
        if not path.is_dir():
            raise UsageError(f"prefix {str(path)!r} does not exist", subject=str(path))
        prefixes.setdefault(os.path.abspath(path), path)
    for name in sorted(named):
        if Path(name).is_dir():
            prefixes.setdefault(name, Path(name))
    refs: list[Reference] = []
    for path in prefixes.values():
        refs += prefix_references(path)
    return tuple(prefixes), refs


def prefix_references(prefix: Path) -> list[Reference]:
    """Every audit reference in ``prefix``: each version's receipt, then the host state's entries."""
    refs: list[Reference] = []
    for path, receipt in _receipts(prefix):
        refs += _refs(receipt.get("audit"), str(path))
    state = HostState.for_prefix(prefix)
    snapshot = state.load()  # a damaged state refuses (exit 7), as every reader of it does
    for name, entry in sorted(snapshot.bundles.items()):
        refs += _refs(list(entry.audit), f"{state.path} bundles.{name}")
    for i, event in enumerate(snapshot.events):
        refs += _refs(event.get("audit"), f"{state.path} events[{i}]")
    return refs


def _receipts(prefix: Path) -> Iterable[tuple[Path, dict[str, object]]]:
    seen = 0
    for home in sorted(_dirs(prefix)):
        for version in sorted(_dirs(home)):
            if version.name == CURRENT:
                continue
            seen += 1
            if seen > MAX_VERSION_DIRS:
                return
            data = _read(version / RECEIPT)
            if isinstance(data, dict):
                yield version / RECEIPT, data


def _dirs(folder: Path) -> list[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return [Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]


def _read(path: Path) -> object:
    """A receipt, or None when there is none that parses: a receipt gapship cannot read names nothing."""
    try:
        data = read_optional(path, cap=MAX_RECEIPT_BYTES, refuse=lambda r: Malformed(r.strerror))
        return None if data is None else parse_json(data, source=str(path), error=Malformed)
    except (OSError, ValueError):
        return None


def _refs(value: object, source: str) -> list[Reference]:
    if not isinstance(value, list):
        return []
    return [Reference(source=source, ref=ref) for ref in map(AuditRef.from_value, value) if ref is not None]
