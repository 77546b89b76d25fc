"""Exports of the transparency log that travel back across the gap, and their verification with only
the host's public key and the last checkpoint the vendor accepted (docs/audit.md, "Exports").

An export is gzip-compressed: one header line (canonical JSON: the checkpoint it was made since, a
new signed checkpoint, the signed checkpoints in between, the frontier of the old tree and the RFC 9162
consistency proof), then the records after the old checkpoint, verbatim. The new checkpoint's signature
covers everything: the verifier recomputes its root from the old tree's frontier, which must fold to
the accepted root, and the records.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..crypto import merkle
from ..errors import IntegrityError, TrustError, UsageError
from ..formats.note import Checkpoint, NoteSigner, open_checkpoint, unverified_origin
from ..kit import Refusal, open_regular
from .tlog import canonical_line, MAX_CHECKPOINT_BYTES, MAX_LINE_BYTES, TransparencyLog, host_error

EXPORT_FORMAT = "gapship-tlog-export"
MAX_EXPORT_HEADER = 16 << 20


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def unb64(text: object, *, what: str, source: str) -> bytes:
    import base64
    import binascii

    try:
        if not isinstance(text, str):
            raise TypeError
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError):
        raise IntegrityError(f"{source}: {what} is not base64", subject=source) from None
    if len(raw) != 32:
        raise IntegrityError(f"{source}: {what} is not a 32-byte hash", subject=source)
    return raw


@dataclass(frozen=True)
class ExportResult:
    since: Checkpoint
    checkpoint: Checkpoint
    records: int
    bytes: int
    checkpoints: int

    def to_dict(self) -> dict[str, object]:
        return {"origin": self.checkpoint.origin, "since_size": self.since.size, "size": self.checkpoint.size,
                "root": b64(self.checkpoint.root), "records": self.records, "bytes": self.bytes,
                "checkpoints": self.checkpoints}


def read_checkpoint_file(path: Path, *, what: str) -> bytes:
    from ..kit import read_bounded

    def refuse(r: Refusal) -> Exception:
        if r.reason == "missing":
            return UsageError(f"{what} {str(r.path)!r} does not exist", subject=str(r.path))
        if r.reason == "too-large":
            return UsageError(f"{what} {r.path} is over {MAX_CHECKPOINT_BYTES} bytes: not a checkpoint",
                              subject=str(r.path))
        return UsageError(f"cannot read {what} {r.path}: {r.strerror}", subject=str(r.path))

    return read_bounded(path, cap=MAX_CHECKPOINT_BYTES, refuse=refuse, follow_symlinks=True)


def check_since(log: TransparencyLog, since_note: bytes, keys: Sequence[tuple[str, Any]], *,
                source: str) -> Checkpoint:
    """The checkpoint ``since_note``, signed by one of ``keys`` for this log, and still a prefix of it:
    the host refuses to export from a checkpoint its own log contradicts (exit 3)."""
    since = open_checkpoint(since_note, keys, source=source, origin=log.origin)
    if since.size > log.size:
        raise IntegrityError(f"{source} has {since.size} records, but {log.path} holds only {log.size}: the log was "
                             "cut after that checkpoint", subject=source)
    if log.root(since.size) != since.root:
        raise IntegrityError(f"{log.path}: its first {since.size} records are not those of {source}: the log was "
                             "rewritten after that checkpoint", subject=source)
    return since


def export_since(log: TransparencyLog, since: Checkpoint, out: Path, *, signers: Sequence[NoteSigner],
                 host: str, exported_at: str) -> ExportResult:
    """Write the records after ``since`` with a fresh signed checkpoint, the consistency proof and the
    frontier of ``since``, gzip-compressed (docs/audit.md, "Exports")."""
    cp, note = log.checkpoint(signers)
    kept = log.checkpoints_between(since.size, cp.size)
    header = {
        "format": EXPORT_FORMAT, "version": 1, "origin": log.origin, "host": host, "exported_at": exported_at,
        "since": {"size": since.size, "root": b64(since.root)},
        "checkpoint": note.decode("utf-8"), "checkpoints": [k.decode("utf-8", "replace") for k in kept],
        "frontier": [b64(h) for h in merkle.frontier(log.node, since.size)],
        "consistency": [b64(h) for h in log.consistency_proof(since.size, cp.size)],
        "records": cp.size - since.size,
    }
    size = 0
    try:
        with open(out, "xb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as z:
            z.write(canonical_line(header).encode() + b"\n")
            for chunk in log.lines(since.size, cp.size):
                z.write(chunk)
                size += len(chunk)
        with open(out, "rb+") as f:
            os.fsync(f.fileno())
    except FileExistsError:
        raise UsageError(f"{out} exists; refusing to overwrite it", subject=str(out)) from None
    except OSError as e:
        out.unlink(missing_ok=True)
        raise host_error(e, out) from None
    return ExportResult(since=since, checkpoint=cp, records=cp.size - since.size, bytes=size, checkpoints=len(kept))


@dataclass(frozen=True)
class ExportCheck:
    since: Checkpoint
    checkpoint: Checkpoint
    checkpoint_note: bytes
    records: int
    checkpoints: int
    header: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"origin": self.checkpoint.origin, "since_size": self.since.size, "size": self.checkpoint.size,
                "root": b64(self.checkpoint.root), "records": self.records, "checkpoints": self.checkpoints,
                "host": self.header.get("host"), "exported_at": self.header.get("exported_at")}


def is_tlog_export(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts as gzip does (a FIFO or device is never opened
    for reading beyond a non-blocking open: the caller's own reader refuses it)."""
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # opening some devices has effects: not even that
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, 2, 0) == b"\x1f\x8b"
    finally:
        os.close(fd)


def verify_export_since(path: Path, since_note: bytes, pubkey: Any, *, since_source: str) -> ExportCheck:
    """Check a transparency-log export with only the host's public key and the last checkpoint the
    vendor accepted; return what it proves or raise naming the first record or checkpoint that does
    not fit: :class:`TrustError` (exit 4) for a signature, :class:`IntegrityError` (exit 3) for a
    truncation, a rewrite or a fork."""
    source = str(path)
    name = unverified_origin(since_note, source=since_source)
    keys = [(name, pubkey)]
    since = open_checkpoint(since_note, keys, source=since_source)
    try:
        fd, _ = open_regular(path, refuse=_refuse_export, follow_symlinks=True)  # a FIFO or device: refused
        with os.fdopen(fd, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as z:
            header = _read_header(z, source)
            cp_note = str(header.get("checkpoint", "")).encode("utf-8")
            cp = open_checkpoint(cp_note, keys, source=f"{source}: its checkpoint", origin=since.origin)
            _check_shape(header, since, cp, source, since_source)
            marks = _intermediate(header, keys, since, cp, source)
            count = _check_records(z, since, cp, marks, header, source)
    except (OSError, EOFError, gzip.BadGzipFile, ValueError) as e:
        if isinstance(e, (IntegrityError, TrustError, UsageError)):
            raise
        raise IntegrityError(f"{source}: the export is damaged ({e}): cut short or not a gapship export",
                             subject=source) from None
    return ExportCheck(since=since, checkpoint=cp, checkpoint_note=cp_note, records=count,
                       checkpoints=len(marks), header=header)


def _refuse_export(r: Refusal) -> Exception:
    if r.reason == "missing":
        return UsageError(f"export {str(r.path)!r} does not exist", subject=str(r.path))
    return UsageError(f"cannot read export {r.path}: {r.strerror or r.reason}", subject=str(r.path))


def _read_header(z: gzip.GzipFile, source: str) -> dict[str, Any]:
    line = z.readline(MAX_EXPORT_HEADER + 1)
    if not line.endswith(b"\n"):
        raise IntegrityError(f"{source}: no export header line (over {MAX_EXPORT_HEADER} bytes or cut short)",
                             subject=source)
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT or header.get("version") != 1:
        raise IntegrityError(f"{source}: not a gapship transparency-log export (format {EXPORT_FORMAT} v1)",
                             subject=source)
    return header


def _check_shape(header: Mapping[str, Any], since: Checkpoint, cp: Checkpoint, source: str,
                 since_source: str) -> None:
    if cp.size < since.size:
        raise IntegrityError(f"{source}: its checkpoint has {cp.size} records, fewer than the {since.size} of the "
                             f"accepted checkpoint {since_source}: the log was truncated", subject=source)
    hs = header.get("since")
    if not isinstance(hs, dict) or hs.get("size") != since.size or unb64(
            hs.get("root"), what="since.root", source=source) != since.root:
        raise IntegrityError(f"{source} was exported since another checkpoint ({hs.get('size') if isinstance(hs, dict) else '?'} "
                             f"records), not since {since_source} ({since.size})", subject=source)
    frontier = [unb64(h, what="frontier hash", source=source) for h in _list(header.get("frontier"), source)]
    consistency = [unb64(h, what="consistency hash", source=source) for h in _list(header.get("consistency"), source)]
    try:
        if merkle.fold_frontier(since.size, frontier) != since.root:
            raise merkle.ProofError("frontier")
        merkle.verify_consistency(since.size, cp.size, since.root, cp.root, consistency)
    except merkle.ProofError:
        raise IntegrityError(f"{source}: its checkpoint (size {cp.size}) is not consistent with the accepted "
                             f"checkpoint {since_source} (size {since.size}): the log was rewritten or forked "
                             f"before record {since.size + 1}", subject=since_source) from None


def _list(value: object, source: str) -> list[object]:
    if not isinstance(value, list):
        raise IntegrityError(f"{source}: malformed export header", subject=source)
    return value


def _intermediate(header: Mapping[str, Any], keys: Sequence[tuple[str, Any]], since: Checkpoint, cp: Checkpoint,
                  source: str) -> dict[int, bytes]:
    marks: dict[int, bytes] = {}
    for i, text in enumerate(_list(header.get("checkpoints"), source)):
        c = open_checkpoint(str(text).encode("utf-8"), keys, source=f"{source}: checkpoint {i + 1}",
                            origin=since.origin)
        if not since.size < c.size < cp.size:
            raise IntegrityError(f"{source}: checkpoint {i + 1} (size {c.size}) is outside the export", subject=source)
        marks[c.size] = c.root
    return marks


def _check_records(z: gzip.GzipFile, since: Checkpoint, cp: Checkpoint, marks: Mapping[int, bytes],
                   header: Mapping[str, Any], source: str) -> int:
    frontier = [unb64(h, what="frontier hash", source=source) for h in _list(header.get("frontier"), source)]
    tree = merkle.Extender(since.size, frontier)
    prev: str | None = None
    last_mark = since.size
    while True:
        raw = z.readline(MAX_LINE_BYTES + 1)
        if not raw:
            break
        n = tree.size + 1
        if not raw.endswith(b"\n") or tree.size >= cp.size:
            why = "is cut short" if not raw.endswith(b"\n") else "is beyond the signed checkpoint's size"
            raise IntegrityError(f"{source}: record {n} {why}", subject=f"record {n}")
        line = raw[:-1]
        _check_link(line, n, prev, source)
        prev = "sha256:" + hashlib.sha256(line).hexdigest()
        tree.add(merkle.leaf_hash(line))
        if tree.size in marks and tree.root() != marks[tree.size]:
            raise IntegrityError(f"{source}: checkpoint at size {tree.size} does not fit the records: one of "
                                 f"records {last_mark + 1}..{tree.size} was changed", subject=f"checkpoint {tree.size}")
        if tree.size in marks:
            last_mark = tree.size
    if tree.size != cp.size:
        raise IntegrityError(f"{source}: holds records up to {tree.size}, but its checkpoint signs {cp.size}: "
                             f"record {tree.size + 1} on was cut off", subject=f"record {tree.size + 1}")
    if tree.root() != cp.root:
        raise IntegrityError(f"{source}: the records do not hash to the signed checkpoint: one of records "
                             f"{last_mark + 1}..{cp.size} was changed", subject=f"checkpoint {cp.size}")
    return tree.size - since.size


def _check_link(line: bytes, n: int, prev: str | None, source: str) -> None:
    """The chain inside an export: record ``n`` carries ``seq`` n and the previous line's hash (the
    first one's predecessor is not in the export; the tree covers it)."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return  # a sealed torn line (installer/host/audit.py): a leaf like any other; the tree checks it
    if record.get("seq") != n:
        raise IntegrityError(f"{source}: record {n} carries sequence number {record.get('seq')!r}: records were "
                             "removed, inserted or moved", subject=f"record {n}")
    if prev is not None and record.get("prev") != prev:
        raise IntegrityError(f"{source}: record {n - 1} was changed (record {n} records another hash for it)",
                             subject=f"record {n - 1}")
