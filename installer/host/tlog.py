"""The transparency log: the host's audit log as the leaves of an RFC 6962 Merkle tree, with a node
store beside it, group commit, signed checkpoints and exports (docs/audit.md).

One file, two views. ``LOG`` stays the hash-chained JSON Lines log of installer/host/audit.py (every
line canonical JSON with ``seq``, ``prev`` and ``audit_version``), so ``gapship audit verify --log``
and today's exports keep working, and the installer's own verify and install records land in it as
before. Each line (its exact bytes, without the newline) is also leaf ``seq - 1`` of a Merkle tree,
whose nodes live in ``LOG.tree/``:

- ``index``: one little-endian uint64 per record, the byte offset where its line ends;
- ``level-NN``: the 32-byte hash of every *complete* subtree of 2**NN leaves, in order (level 00 holds
  the leaf hashes), so a tree head, an inclusion or a consistency proof reads O(log n) hashes;
- ``meta.json``: the log's origin (the name its checkpoints carry);
- ``checkpoints/SIZE.note``: the signed checkpoints made so far.

The records file is the truth; the node store is derived from it and can always be rebuilt. An append
takes the records file's exclusive ``flock`` (the one AuditLog takes, so the two writers are
serialised), catches the store up with any line another writer added (the installer's records, or a
log that had no tree yet: the migration), writes the new nodes and offsets, then the batch of lines
with one ``write``, then ``fdatasync``: one sync per batch, however many records it holds (group
commit). A record is acknowledged only after that sync. A write or sync that fails (a full disk) is cut
off again, so what was acknowledged stays and nothing half-written does; a process killed half-way
leaves at most an unacknowledged torn tail, which the next open cuts off.

A checkpoint is signed only after the store was checked against the records since the last
checkpoint this host signed, and the tree against that checkpoint (:meth:`TransparencyLog.check_store`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..crypto import merkle
from ..errors import HostError, IntegrityError, UsageError

if TYPE_CHECKING:  # signing and threads are imported when used: `gapship audit append` starts fast
    import threading

    from ..formats.note import Checkpoint, NoteSigner

AUDIT_VERSION = 1  # the chain's record version (installer/host/audit.py)
GENESIS = "sha256:" + "0" * 64
MAX_LINE_BYTES = 64 * 1024  # as installer/host/audit.py: a record line, newline included
MAX_DEPTH = 32
RESERVED = ("seq", "prev", "audit_version")
MAX_CHECKPOINT_BYTES = 64 * 1024
MAX_NOTES_TRIED = 16  # kept checkpoints tried (largest first) for the last one this host signed
_SHA256 = hashlib.sha256
_DECODE = json.JSONDecoder().decode
# the chain's canonical JSON (installer/kit.py canonical_json), as a bound method: one record per call
canonical_line = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class BadRecord(ValueError):
    """One record refused (not an object, too large, nested too deeply, a reserved field): the caller
    reports it and goes on with the next."""


def encode_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Check one record given as a value (the library's callers) before it is queued: an object,
    without the chain's own fields, within the nesting limit. Returns it as a plain dict."""
    if isinstance(record, dict) and _too_deep(record):
        raise BadRecord(f"is nested more than {MAX_DEPTH} levels deep")
    return _checked(record)


def _checked(record: object) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise BadRecord(f"is a JSON {_json_type(record)}, not an object")
    for key in RESERVED:
        if key in record:
            raise BadRecord(f"carries the field {key!r}, which the log sets itself")
    return record


def _json_type(value: object) -> str:
    names = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def parse_record(line: bytes | str) -> dict[str, Any]:
    """One input line (JSON) as a record; raise :class:`BadRecord` saying why not."""
    if len(line) > MAX_LINE_BYTES:
        raise BadRecord(f"is over {MAX_LINE_BYTES} bytes")
    # json's decoder recurses per level: a cheap count first, so a line of 10,000 brackets is refused
    # by the depth rule rather than by the interpreter's stack
    if isinstance(line, bytes):
        opens = line.count(b"[") + line.count(b"{")
    else:
        opens = line.count("[") + line.count("{")
    if opens > MAX_DEPTH and _deep_text(line):
        raise BadRecord(f"is nested more than {MAX_DEPTH} levels deep")
    # (a line with at most MAX_DEPTH brackets cannot nest deeper: no walk of the parsed value needed)
    try:
        value = _DECODE(line.decode("utf-8") if isinstance(line, bytes) else line)
    except UnicodeDecodeError:
        raise BadRecord("is not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise BadRecord(f"is not JSON ({str(e)[:80]})") from None
    return _checked(value)


def _deep_text(line: bytes | str) -> bool:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    depth, in_string, escaped = 0, False, False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif c in "]}":
            depth -= 1
    return False


def _too_deep(value: object) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def inference_record(*, bundle: str, version: str, manifest_digest: str, model: str, site: str | None,
                     request_id: str, caller: str, outcome: str, safeguards: Sequence[str] = (),
                     prompt: bytes | str | None = None, response: bytes | str | None = None,
                     time_utc: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One inference as a record (docs/audit.md, "Record schema"): hashes of the prompt and the
    response, never their contents."""

    def digest(value: bytes | str | None) -> str | None:
        if value is None:
            return None
        return "sha256:" + _SHA256(value.encode() if isinstance(value, str) else value).hexdigest()

    record: dict[str, Any] = {
        "kind": "inference",
        "time": time_utc or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundle": {"name": bundle, "version": version, "manifest_digest": manifest_digest},
        "model": model, "site": site, "request_id": request_id, "caller": caller, "outcome": outcome,
        "safeguards": list(safeguards), "prompt_sha256": digest(prompt), "response_sha256": digest(response),
    }
    if extra:
        record["extra"] = dict(extra)
    return record


@dataclass(frozen=True)
class Commit:
    """A batch made durable: leaves ``first`` .. ``first + count - 1``; the tree now has ``size``."""

    first: int
    count: int
    size: int


@dataclass
class Recovery:
    """What opening the log had to repair: a torn tail cut off, nodes rebuilt, lines taken into the tree."""

    torn_bytes: int = 0
    dropped_nodes: int = 0
    adopted_lines: int = 0


@dataclass(frozen=True)
class StoreCheck:
    """What was checked before a checkpoint was signed: leaves ``since`` .. ``size - 1`` against the
    records (``since`` 0: the whole tree), and consistency with the checkpoint in ``source``."""

    since: int
    size: int
    source: str
    rebuilt: bool


def _first_diff(a: bytes, b: bytes, width: int) -> int:
    """The index of the first ``width``-byte item where ``a`` and ``b`` differ (or where one ends)."""
    for i in range(0, max(len(a), len(b)), width):
        if a[i:i + width] != b[i:i + width]:
            return i // width
    return min(len(a), len(b)) // width


def tree_dir(path: Path) -> Path:
    return path.with_name(path.name + ".tree")


def default_origin(path: Path) -> str:
    """The origin a new log's checkpoints carry: host name and log file name (no spaces, no ``+``)."""
    import socket

    raw = f"{socket.gethostname()}/gapship-audit/{path.name}"
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-/") else "_" for c in raw)


class TransparencyLog:
    """An open transparency log (see the module's docstring). Not thread-safe: one thread appends
    (:class:`GroupCommit` is the serving stack's many-threads front)."""

    def __init__(self, path: Path, fd: int, origin: str) -> None:
        self.path = path
        self.origin = origin
        self._fd = fd
        self._dir = tree_dir(path)
        self._index = self._open_store("index")
        self._levels: list[int] = []
        self.size = 0
        self._known_bytes = -1  # the records file's size when the state below was last right
        self._seq = 0
        self._prev = GENESIS
        self.recovery = Recovery()
        self._signed: Checkpoint | None = None  # the last checkpoint this object signed
        self.rebuilt = False  # the store was rebuilt from the records (checkpoint(rebuild=True))
        self.last_check: StoreCheck | None = None

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, create: bool = True, origin: str | None = None) -> TransparencyLog:
        """Open (or, with ``create``, make) the log and bring its node store up to date with its lines."""
        fd = _open_records(path, create=create)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise HostError(f"audit log {path} is not a regular file", subject=str(path))
        log = None
        try:
            log = cls(path, fd, _load_origin(path, origin))
            with log._locked():
                pass  # catches the node store up
        except BaseException:
            if log is not None:
                log.close()
            else:
                os.close(fd)
            raise
        return log

    def _open_store(self, name: str) -> int:
        try:
            self._dir.mkdir(mode=0o750, exist_ok=True)
            return os.open(self._dir / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise HostError(f"cannot open the log's node store {self._dir / name}: {e.strerror}",
                            subject=str(self._dir)) from None

    def _level(self, level: int) -> int:
        while len(self._levels) <= level:
            self._levels.append(self._open_store(f"level-{len(self._levels):02d}"))
        return self._levels[level]

    def close(self) -> None:
        for fd in [self._fd, self._index, *self._levels]:
            if fd >= 0:
                os.close(fd)
        self._fd = self._index = -1
        self._levels = []

    def __enter__(self) -> TransparencyLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the lock and the catch-up -------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size != self._known_bytes:
                self._catch_up()
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        """Make the node store describe exactly the records file's complete lines (under the lock)."""
        try:
            total = self._cut_torn_tail()
            n = self._trusted_prefix()
            end = self._offset(n)
            if end > total:  # the store ran ahead of the records (killed between the two writes)
                n = self._records_within(total)
                self._truncate_store(n)
                end = self._offset(n)
            if end < total:  # lines the store does not know: another writer's, or a log without a tree yet
                n = self._adopt(n, end, total)
            self.size = n
            self._known_bytes = total
            self._seq, self._prev = self._tail(total)
        except OSError as e:
            raise HostError(f"cannot bring the node store of {self.path} up to date: {e.strerror or e}",
                            subject=str(self._dir)) from None

    def _cut_torn_tail(self) -> int:
        total = os.fstat(self._fd).st_size
        if total == 0 or os.pread(self._fd, 1, total - 1) == b"\n":
            return total
        pos = total
        while pos > 0:
            start = max(0, pos - 65536)
            chunk = os.pread(self._fd, pos - start, start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                pos = start + cut + 1
                break
            pos = start
        # never acknowledged: an append is acknowledged only after its whole batch was synced
        os.ftruncate(self._fd, pos)
        os.fsync(self._fd)
        self.recovery.torn_bytes += total - pos
        return pos

    def _count(self, fd: int) -> int:
        return os.fstat(fd).st_size // (8 if fd == self._index else merkle.HASH_SIZE)

    def _trusted_prefix(self) -> int:
        """How many leaves the store holds in full: index and every level consistent; levels that fell
        behind (a kill between two store writes) are recomputed from the level below."""
        n = min(self._count(self._index), self._count(self._level(0)))
        level = 1
        while n >> level:
            want = n >> level
            have = self._count(self._level(level))
            if have < want:
                self._rebuild_level(level, have, want)
            level += 1
        self._truncate_store(n)
        return n

    def _rebuild_level(self, level: int, have: int, want: int) -> None:
        below = os.pread(self._level(level - 1), (want - have) * 64, have * 64)
        nodes = b"".join(merkle.node_hash(below[i:i + 32], below[i + 32:i + 64]) for i in range(0, len(below), 64))
        os.ftruncate(self._level(level), have * 32)
        os.pwrite(self._level(level), nodes, have * 32)
        self.recovery.dropped_nodes += want - have

    def _truncate_store(self, n: int) -> None:
        if os.fstat(self._index).st_size != n * 8:
            os.ftruncate(self._index, n * 8)
        level = 0
        while level < len(self._levels) or n >> level:
            fd = self._level(level)
            if os.fstat(fd).st_size != (n >> level) * 32:
                os.ftruncate(fd, (n >> level) * 32)
            level += 1

    def _offset(self, n: int) -> int:
        """Where record ``n - 1``'s line ends (0 for n == 0)."""
        if n == 0:
            return 0
        raw = os.pread(self._index, 8, (n - 1) * 8)
        if len(raw) != 8:
            raise IntegrityError(f"node store of {self.path}: index has no entry {n - 1}", subject=str(self._dir))
        return int.from_bytes(raw, "little")

    def _records_within(self, total: int) -> int:
        """The number of records whose lines end at or before ``total`` (which must be a line end)."""
        lo, hi = 0, self._count(self._index)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._offset(mid) <= total:
                lo = mid
            else:
                hi = mid - 1
        if self._offset(lo) != total:  # the index does not match the lines: start again from nothing
            self._truncate_store(0)
            return 0
        return lo

    def _adopt(self, n: int, start: int, total: int) -> int:
        """Take the complete lines in [start, total) into the tree, in pieces of at most 8 MiB."""
        pos = start
        carry = b""
        while pos < total:
            chunk = carry + os.pread(self._fd, min(8 << 20, total - pos), pos)
            pos += len(chunk) - len(carry)
            cut = chunk.rfind(b"\n") + 1
            lines, carry = chunk[:cut], chunk[cut:]
            if lines:
                parts = lines.split(b"\n")[:-1]
                base = pos - len(carry) - len(lines)
                self._write_nodes(n, [merkle.leaf_hash(p) for p in parts], _ends(base, parts, 1))
                n += len(parts)
                self.recovery.adopted_lines += len(parts)
        return n

    def _tail(self, total: int) -> tuple[int, str]:
        """The last line's ``seq`` and chain hash (installer/host/audit.py's rules)."""
        if total == 0:
            return 0, GENESIS
        start = self._offset(self.size - 1) if self.size > 1 else 0
        last = os.pread(self._fd, total - start, start).rstrip(b"\n")
        try:
            seq = json.loads(last)["seq"]
            if not isinstance(seq, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise HostError(f"audit log {self.path}: the last line is not a gapship audit record; refusing to "
                            "append", subject=str(self.path),
                            hint=f"`gapship audit verify --log {self.path}` shows the damage") from None
        return seq, "sha256:" + _SHA256(last).hexdigest()

    # -- appending ------------------------------------------------------------------------------------

    def append(self, records: Sequence[Mapping[str, Any]]) -> Commit:
        """Append ``records`` (each checked by :func:`encode_record` first) as one durable batch."""
        with self._locked():
            lines, leaves, tail = self._encode(records)
            first = self.size
            self._write_nodes(first, leaves, _ends(self._known_bytes, lines, 0))
            self._write_lines(b"".join(lines), first, len(lines), tail)
            return Commit(first=first, count=len(lines), size=self.size)

    def _encode(self, records: Sequence[Mapping[str, Any]]) -> tuple[list[bytes], list[bytes], tuple[int, str]]:
        seq, prev = self._seq, self._prev
        lines: list[bytes] = []
        leaves: list[bytes] = []
        encode, sha = canonical_line, _SHA256
        for record in records:
            seq += 1
            line = encode({**record, "audit_version": AUDIT_VERSION, "seq": seq, "prev": prev}).encode()
            if len(line) >= MAX_LINE_BYTES:
                raise BadRecord(f"record {seq} is {len(line) + 1} bytes with the chain's fields, over the "
                                f"{MAX_LINE_BYTES}-byte cap")
            prev = "sha256:" + sha(line).hexdigest()
            leaves.append(sha(b"\x00" + line).digest())
            lines.append(line + b"\n")
        return lines, leaves, (seq, prev)

    def _write_nodes(self, first: int, leaves: list[bytes], offsets: list[int]) -> None:
        """Append ``leaves`` (leaf ``first`` on), every subtree they complete, and their lines' end
        ``offsets`` to the store. Each level is one write; nothing is synced (the store is derived)."""
        if not leaves:
            return
        try:
            level, start, nodes = 0, first, leaves
            while nodes:
                fd = self._level(level)
                _pwrite_all(fd, b"".join(nodes), start * 32)
                if start & 1:  # the left sibling of the first new node is already stored
                    nodes = [_pread_node(fd, start - 1, self._dir)] + nodes
                    start -= 1
                nodes = [merkle.node_hash(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
                start //= 2
                level += 1
            _pwrite_all(self._index, struct.pack(f"<{len(offsets)}Q", *offsets), first * 8)
        except OSError as e:
            self._truncate_store(first)
            raise host_error(e, self._dir) from None

    def _write_lines(self, data: bytes, first: int, count: int, tail: tuple[int, str]) -> None:
        before = self._known_bytes
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write (" + os.strerror(errno.ENOSPC) + ")")
            os.fdatasync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, before)
                os.fsync(self._fd)
                self._truncate_store(first)
            except OSError:
                self._known_bytes = -1  # caught up again at the next lock
            raise host_error(e, self.path) from None
        self._known_bytes = before + len(data)
        self.size = first + count
        self._seq, self._prev = tail

    # -- reading the tree -----------------------------------------------------------------------------

    def node(self, level: int, index: int) -> bytes:
        return _pread_node(self._level(level), index, self._dir)

    def root(self, size: int | None = None) -> bytes:
        return merkle.root(self.node, self.size if size is None else size)

    def leaf_line(self, index: int) -> bytes:
        start = self._offset(index)
        end = self._offset(index + 1)
        return os.pread(self._fd, end - start, start).rstrip(b"\n")

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return merkle.inclusion_proof(self.node, index, self.size if size is None else size)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        return merkle.consistency_proof(self.node, old, self.size if new is None else new)

    def lines(self, start: int, end: int) -> Iterator[bytes]:
        """The lines of records ``start`` .. ``end - 1``, each with its newline, read in pieces."""
        pos, stop = self._offset(start), self._offset(end)
        while pos < stop:
            chunk = os.pread(self._fd, min(4 << 20, stop - pos), pos)
            if not chunk:
                raise IntegrityError(f"{self.path} ends before record {end}", subject=str(self.path))
            yield chunk
            pos += len(chunk)

    def sync(self) -> None:
        """Bring the view up to date with lines other writers added (under the lock)."""
        with self._locked():
            pass

    # -- checkpoints ----------------------------------------------------------------------------------

    def checkpoint(self, signers: Sequence[NoteSigner], *, rebuild: bool = False) -> tuple[Checkpoint, bytes]:
        """Sign a checkpoint of the tree as it is now, keep it in ``checkpoints/``, return it.

        The root is signed only once it is checked (:meth:`check_store`): the store against the
        records since the last checkpoint this host signed, and the tree against that checkpoint. A
        mismatch raises :class:`IntegrityError` (exit 3) naming the first bad leaf or node, and nothing
        is signed. ``rebuild`` first rebuilds the store from the records (the documented repair)."""
        from ..formats.note import Checkpoint

        with self._locked():
            if rebuild:
                self._rebuild_store()
            root, self.last_check = self.check_store(signers)
            cp = Checkpoint(origin=self.origin, size=self.size, root=root)
            note = cp.sign(signers)
            self._keep(cp, note)
            for fd in [self._index, *self._levels]:
                os.fsync(fd)  # the proofs of a signed head should survive a power cut too
            self._signed = cp
        return cp, note

    # -- checking the store before signing ----------------------------------------------------------------

    def _rebuild_store(self) -> None:
        """Rebuild the node store from the records: the catch-up's own path when the index does not
        match the lines (every level and the index emptied, then every line adopted again)."""
        for p in self._dir.glob("level-*"):  # levels this process has not opened, from another store
            if p.name[6:].isdigit():
                self._level(int(p.name[6:]))
        self._truncate_store(0)
        self._known_bytes = -1
        self.recovery.adopted_lines = 0
        self._catch_up()
        self.rebuilt = True

    def last_signed(self, signers: Sequence[NoteSigner]) -> tuple[Checkpoint, str] | None:
        """The last checkpoint this host signed for this log, and where it came from: the one this
        process signed, else the largest note in ``checkpoints/`` whose signature verifies with
        ``signers``' keys and whose origin is this log's (notes that do not verify are passed over; at
        most :data:`MAX_NOTES_TRIED` of them)."""
        from ..errors import GapshipError
        from ..formats.note import open_checkpoint

        if self._signed is not None:
            return self._signed, "the checkpoint this process signed"
        folder = self._dir / "checkpoints"
        if not folder.is_dir():
            return None
        notes = sorted((p for p in folder.glob("*.note") if p.stem.isdigit()), key=lambda p: int(p.stem), reverse=True)
        keys = [(s.name, s.public) for s in signers]
        for p in notes[:MAX_NOTES_TRIED]:
            try:
                data = _read_note(p)
                return open_checkpoint(data, keys, source=str(p), origin=self.origin), str(p)
            except (OSError, GapshipError):
                continue
        return None

    def check_store(self, signers: Sequence[NoteSigner]) -> tuple[bytes, StoreCheck]:
        """The root of the tree, checked (under the lock): level 0 against the records' lines since the
        last checkpoint this host signed (the whole tree when there is none), the upper nodes that
        cover them against their children, and the tree against that checkpoint by a consistency proof
        from the store. Raises :class:`IntegrityError` naming the first bad leaf or node."""
        found = self.last_signed(signers)
        since, source = found if found is not None else (None, "")
        old = since.size if since is not None else 0
        n = self.size
        if since is not None and since.size > n:
            raise self._contradicts(since, source, f"the log has {n} record(s), fewer than the {since.size} it signed")
        self._check_leaves(old, n)
        self._check_nodes(old, n)
        root = self.root()
        if since is not None:
            try:
                merkle.verify_consistency(old, n, since.root, root, self.consistency_proof(old))
            except merkle.ProofError:
                # name the bad node if the store holds one (the whole tree checked: the failure path only)
                self._check_leaves(0, old)
                self._check_nodes(0, n)
                raise self._contradicts(since, source, "the tree of its records is not consistent with it") from None
        return root, StoreCheck(since=old, size=n, source=source, rebuilt=self.rebuilt)

    def _contradicts(self, since: Checkpoint, source: str, why: str) -> IntegrityError:
        return IntegrityError(
            f"audit log {self.path} contradicts the checkpoint of size {since.size} this host signed ({source}): {why}; "
            "its records were cut or rewritten since; nothing signed", subject=str(self.path),
            hint=f"the records, not the node store, changed: `gapship audit verify --log {self.path}` shows the "
                 "damage; a rebuild of the store cannot fix it")

    def _bad_store(self, what: str) -> IntegrityError:
        return IntegrityError(
            f"node store {self._dir} does not match the records of {self.path}: {what}; nothing signed",
            subject=str(self._dir),
            hint=f"the store is derived from the records: `gapship audit checkpoint --log {self.path} --out FILE "
                 "--rebuild-store` rebuilds it from them, checks it again and signs")

    def _check_leaves(self, first: int, end: int) -> None:
        """Level 0 and the index for leaves ``first`` .. ``end - 1`` against the records' lines."""
        if first >= end:
            return
        pos, stop = self._offset(first), self._offset(end)
        if first and os.pread(self._fd, 1, pos - 1) != b"\n":
            raise self._bad_store(f"index entry {first - 1} (the end of record {first}) is not the end of a line")
        if end == self.size and stop != self._known_bytes:
            raise self._bad_store(f"index entry {end - 1} (the end of record {end}) is not the end of the records")
        level0, i, carry = self._level(0), first, b""
        while pos < stop:
            chunk = carry + os.pread(self._fd, min(8 << 20, stop - pos), pos)
            if len(chunk) == len(carry):
                raise IntegrityError(f"{self.path} ends before record {end}", subject=str(self.path))
            base = pos - len(carry)
            pos += len(chunk) - len(carry)
            cut = chunk.rfind(b"\n") + 1
            parts, carry = chunk[:cut].split(b"\n")[:-1], chunk[cut:]
            if not parts:
                continue
            if i == first and first:
                self._check_seq(parts[0], first)
            if i + len(parts) > end:
                raise self._bad_store(f"the records hold more lines after leaf {first} than the store's {end - first}")
            sha = _SHA256
            want = b"".join([sha(b"\x00" + p).digest() for p in parts])
            have = os.pread(level0, len(want), i * 32)
            if have != want:
                raise self._bad_store(f"leaf {i + _first_diff(have, want, 32)} in level-00 is not the hash of its record")
            ends = _ends(base, parts, 1)
            if os.pread(self._index, 8 * len(ends), i * 8) != struct.pack(f"<{len(ends)}Q", *ends):
                have_idx = os.pread(self._index, 8 * len(ends), i * 8)
                j = _first_diff(have_idx, struct.pack(f"<{len(ends)}Q", *ends), 8)
                raise self._bad_store(f"index entry {i + j} is not where record {i + j + 1} ends")
            i += len(parts)
        if carry or i != end:
            raise self._bad_store(f"the store has {end - first} leaves after leaf {first}, the records {i - first}")

    def _check_seq(self, line: bytes, first: int) -> None:
        try:
            seq = json.loads(line).get("seq")
        except (ValueError, AttributeError):
            return  # not a record (a sealed line): the leaf hashes and the line count still bind it
        if isinstance(seq, int) and seq != first + 1:
            raise self._bad_store(f"index entry {first - 1} points at record {seq}, not record {first + 1}")

    def _check_nodes(self, first: int, end: int) -> None:
        """Every stored node at levels 1 and up that covers a leaf in ``first`` .. ``end - 1``, against
        the hash of its two children."""
        level = 1
        while end >> level:
            below, fd = self._level(level - 1), self._level(level)
            j, hi = first >> level, end >> level
            while j < hi:
                m = min(hi - j, 1 << 16)
                kids = os.pread(below, 64 * m, 64 * j)
                if len(kids) != 64 * m:
                    raise self._bad_store(f"level-{level - 1:02d} lacks node {j * 2 + len(kids) // 32}")
                node = merkle.node_hash
                want = b"".join([node(kids[x:x + 32], kids[x + 32:x + 64]) for x in range(0, len(kids), 64)])
                have = os.pread(fd, 32 * m, 32 * j)
                if have != want:
                    d = _first_diff(have, want, 32)
                    if first and (j + d) << level < first:  # it covers older leaves too: is a child the bad
                        self._check_leaves(0, first)       # one? (the whole tree checked, to name the
                        self._check_nodes(0, end)          # deepest; on this failure path only)
                    what = "is missing" if len(have) < (d + 1) * 32 else "is not the hash of its two children"
                    raise self._bad_store(f"node {j + d} of level-{level:02d} {what}")
                j += m
            level += 1

    def _keep(self, cp: Checkpoint, note: bytes) -> None:
        from .atomic import atomic_write

        folder = self._dir / "checkpoints"
        folder.mkdir(mode=0o750, exist_ok=True)
        atomic_write(folder / f"{cp.size:016d}.note", note, mode=0o640)

    def checkpoints_between(self, low: int, high: int) -> list[bytes]:
        """The signed checkpoints kept for sizes strictly between ``low`` and ``high``, in order."""
        folder = self._dir / "checkpoints"
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.glob("*.note")):
            stem = p.stem
            if stem.isdigit() and low < int(stem) < high:
                out.append(_read_note(p))
        return out


def _open_records(path: Path, *, create: bool) -> int:
    """The records file, opened to append (never through a symlink); made if missing and ``create``,
    and then its folder synced, so that a power cut cannot lose the name of a log holding records."""
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        if create:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o640)
            except FileExistsError:
                pass
            else:
                from .atomic import fsync_dir

                fsync_dir(path.parent)
                return fd
        return os.open(path, flags)
    except FileNotFoundError:
        raise UsageError(f"audit log {str(path)!r} does not exist", subject=str(path)) from None
    except OSError as e:
        raise HostError(f"cannot open the audit log {path}: {e.strerror}", subject=str(path)) from None


def _ends(start: int, lines: Iterable[bytes], extra: int) -> list[int]:
    """The end offset of each line, from ``start`` (``extra``: 1 when the lines lack their newline)."""
    out = []
    for line in lines:
        start += len(line) + extra
        out.append(start)
    return out


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[n:], offset + n


def _pread_node(fd: int, index: int, where: Path) -> bytes:
    raw = os.pread(fd, 32, index * 32)
    if len(raw) != 32:
        raise IntegrityError(f"node store {where} lacks node {index} of a level", subject=str(where))
    return raw


def host_error(e: OSError, path: Path) -> HostError:
    what = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
    return HostError(f"cannot append to {path}: {what}; the records acknowledged before are kept",
                     subject=str(path))


def _read_note(path: Path) -> bytes:
    """A kept checkpoint note, through the kit's bounded reader: never a FIFO or device waited on, never
    more than :data:`MAX_CHECKPOINT_BYTES` read. Something else in its place is the store's damage
    (exit 3); a note that cannot be read, the host's trouble (exit 7)."""
    from ..kit import Refusal, read_bounded

    def refuse(r: Refusal) -> Exception:
        if r.reason in ("too-large", "not-regular", "symlink") or r.kind == "directory":
            return IntegrityError(f"{path} is not a checkpoint note ({r.strerror or r.reason})", subject=str(path))
        return HostError(f"cannot read {path}: {r.strerror or r.reason}", subject=str(path))

    return read_bounded(path, cap=MAX_CHECKPOINT_BYTES, refuse=refuse)


def _load_origin(path: Path, wanted: str | None) -> str:
    from ..kit import Refusal, read_bounded

    meta = tree_dir(path) / "meta.json"

    def refuse(r: Refusal) -> Exception:
        if r.reason == "missing":
            return FileNotFoundError()
        return HostError(f"cannot read {meta}: {r.strerror or r.reason}", subject=str(meta))

    try:
        data = json.loads(read_bounded(meta, cap=65536, refuse=refuse))
        origin = data.get("origin") if isinstance(data, dict) else None
        if isinstance(origin, str) and origin:
            return origin
        raise ValueError
    except FileNotFoundError:
        pass
    except ValueError:
        raise HostError(f"{meta} does not name the log's origin", subject=str(meta)) from None
    from .atomic import atomic_write

    origin = wanted or default_origin(path)
    tree_dir(path).mkdir(mode=0o750, parents=True, exist_ok=True)
    atomic_write(meta, canonical_line({"format": "gapship-tlog", "version": 1, "origin": origin}).encode() + b"\n",
                 mode=0o640)
    return origin


# -- group commit for the serving stack ------------------------------------------------------------------


class GroupCommit:
    """The serving stack's front to a log: many threads call :meth:`append` (one record each, per
    request); one committer thread writes whatever has queued as one batch with one sync, at the latest
    ``max_delay`` seconds after the first record of the batch arrived, or as soon as ``max_batch`` have.
    :meth:`append` returns the record's leaf index once it is durable (an acknowledged record is never
    lost); :meth:`submit` returns at once with a :class:`Ticket` to wait on."""

    def __init__(self, log: TransparencyLog, *, max_batch: int = 4096, max_delay: float = 0.005,
                 on_commit: Callable[[Commit], None] | None = None) -> None:
        import threading

        if max_batch < 1 or max_delay < 0:
            raise UsageError("max_batch must be at least 1 and max_delay not negative")
        self.log = log
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._on_commit = on_commit
        self._cond: threading.Condition = threading.Condition()
        self._queue: list[tuple[dict[str, Any], Ticket]] = []
        self._first_at = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gapship-tlog-commit", daemon=True)
        self._thread.start()

    def submit(self, record: Mapping[str, Any]) -> Ticket:
        checked = encode_record(dict(record))
        ticket = Ticket()
        with self._cond:
            if self._closed:
                raise UsageError("the log is closed")
            if not self._queue:
                self._first_at = time.monotonic()
            self._queue.append((checked, ticket))
            if len(self._queue) >= self.max_batch:
                self._cond.notify()
            elif len(self._queue) == 1:
                self._cond.notify()
        return ticket

    def append(self, record: Mapping[str, Any]) -> int:
        return self.submit(record).wait()

    def close(self) -> None:
        """Commit what is queued, then stop the committer."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                while len(self._queue) < self.max_batch and not self._closed:
                    left = self._first_at + self.max_delay - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                if self._queue:
                    self._first_at = time.monotonic()
            self._commit(batch)

    def _commit(self, batch: list[tuple[dict[str, Any], Ticket]]) -> None:
        try:
            commit = self.log.append([r for r, _ in batch])
        except BaseException as e:  # every waiter of this batch learns why; none is acknowledged
            for _, t in batch:
                t._set(None, e)
            return
        for i, (_, t) in enumerate(batch):
            t._set(commit.first + i, None)
        if self._on_commit is not None:
            self._on_commit(commit)


class Ticket:
    """One submitted record: :meth:`wait` returns its leaf index once durable, or raises why not."""

    def __init__(self) -> None:
        import threading

        self._event = threading.Event()
        self._index: int | None = None
        self._error: BaseException | None = None

    def _set(self, index: int | None, error: BaseException | None) -> None:
        self._index, self._error = index, error
        self._event.set()

    def wait(self, timeout: float | None = None) -> int:
        if not self._event.wait(timeout):
            raise TimeoutError("record not committed yet")
        if self._error is not None:
            raise self._error
        assert self._index is not None
        return self._index


# -- the append stream (``gapship audit append``) ---------------------------------------------------------


@dataclass
class AppendSummary:
    appended: int = 0
    refused: int = 0
    batches: int = 0
    first_refused: tuple[int, str] | None = None
    size: int = 0
    checkpoints: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"appended": self.appended, "refused": self.refused, "batches": self.batches, "size": self.size,
                "checkpoints": self.checkpoints}


class AutoCheckpoint:
    """Sign a checkpoint after a commit once ``every`` records or ``interval`` seconds have passed since
    the last one (either may be None)."""

    def __init__(self, log: TransparencyLog, signers: Sequence[NoteSigner], *, every: int | None,
                 interval: float | None) -> None:
        self.log, self.signers, self.every, self.interval = log, signers, every, interval
        self._size = log.size
        self._at = time.monotonic()
        self.made = 0

    def __call__(self, commit: Commit) -> None:
        due = (self.every is not None and commit.size // self.every > self._size // self.every) or (
            self.interval is not None and time.monotonic() - self._at >= self.interval)
        if due:
            self.log.checkpoint(self.signers)
            self._size, self._at = commit.size, time.monotonic()
            self.made += 1


def append_stream(log: TransparencyLog, source: int | BinaryIO, *, max_batch: int = 4096, max_delay: float = 0.01,
                  on_commit: Callable[[Commit], None] | None = None,
                  on_refused: Callable[[int, str], None] | None = None) -> AppendSummary:
    """Append one JSON record per line read from ``fd`` until end of input. Records are committed in
    batches of at most ``max_batch``, and at most ``max_delay`` seconds after the first record of a
    batch was read (input that stops for longer does not hold records back); ``on_commit`` is called
    after each durable batch: that is the acknowledgement. A bad line is refused on its own
    (``on_refused(line number, why)``) and the stream goes on.

    ``source`` is a file descriptor (waited on with ``select`` for the latency bound) or a binary
    file object (read as it comes; the bound is then checked between reads)."""
    import select

    if isinstance(source, int):
        fd = source

        def read() -> bytes:
            return os.read(fd, 1 << 20)

        def ready(timeout: float) -> bool:
            return bool(select.select([fd], [], [], timeout)[0])
    else:
        reader = getattr(source, "read1", source.read)

        def read() -> bytes:
            return bytes(reader(1 << 20))

        def ready(timeout: float) -> bool:
            return True

    summary = AppendSummary(size=log.size)
    pending: list[dict[str, Any]] = []
    first_at = 0.0
    lineno = 0
    buf = b""
    skipping = False  # inside a line already refused as too long

    def commit(whole: bool) -> None:
        """Commit the pending records: all of them, or (``whole`` False) only full batches."""
        nonlocal pending
        end = len(pending) if whole else len(pending) - len(pending) % max_batch
        for i in range(0, end, max_batch):
            done = log.append(pending[i:min(i + max_batch, end)])
            summary.appended += done.count
            summary.batches += 1
            summary.size = done.size
            if on_commit is not None:
                on_commit(done)
        # first_at stays: the rest arrived no earlier, so the latency bound still holds (conservatively)
        pending = pending[end:]

    def refuse(n: int, why: str) -> None:
        summary.refused += 1
        if summary.first_refused is None:
            summary.first_refused = (n, why)
        if on_refused is not None:
            on_refused(n, why)

    def take(line: bytes) -> None:
        nonlocal first_at
        try:
            record = parse_record(line)
        except BadRecord as e:
            refuse(lineno, str(e))
            return
        if not pending:
            first_at = time.monotonic()
        pending.append(record)

    while True:
        if pending:
            left = first_at + max_delay - time.monotonic()
            if len(pending) >= max_batch:
                commit(False)
                continue
            if left <= 0 or not ready(left):
                commit(True)
                continue
        chunk = read()
        if not chunk:
            break
        parts = (buf + chunk).split(b"\n")
        buf = parts.pop()
        for line in parts:
            lineno += 1
            if skipping:
                skipping = False
                continue
            if line.strip():
                take(line)
            else:
                refuse(lineno, "is empty")
        if len(buf) > MAX_LINE_BYTES:
            if not skipping:
                refuse(lineno + 1, f"is over {MAX_LINE_BYTES} bytes")
            skipping, buf = True, b""
    if buf and not skipping:
        lineno += 1
        take(buf)
    if pending:
        commit(True)
    return summary
