"""The host's audit log: a hash-chained JSON Lines file, and signed exports of it (docs/safeguards.md,
"The audit log").

Each line is one canonical-JSON record (sorted keys, no whitespace) carrying ``seq`` (its 1-based line
number) and ``prev``, the SHA-256 of the previous line's exact bytes (without its newline); the first
line's ``prev`` is :data:`GENESIS`. Editing, deleting, inserting or reordering a line therefore breaks
the chain at a line :func:`verify_log` names. Nothing on the host can stop root from rewriting the
whole chain, or from cutting lines off its end: what catches that is an export, which a host key signs
and which travels back across the gap, and which a later export must extend.

Appends are atomic: ``O_APPEND``, an exclusive ``flock`` while the last line is read and the new one
is written with a single ``write``, then ``fsync``; a write or ``fsync`` that fails (a full disk) is
cut off again under the same lock, so a failed append leaves the log as it was. The tail is also
checked when the log is opened, so a command refuses a damaged log before it does any work; the
damage is sealed, never deleted, by :func:`seal_log`: a record after the bad bytes names their hash.

An install appends an *intent* record before anything becomes visible and its outcome after; the
receipt and the host state keep the intent's :class:`AuditRef` (sequence number and line hash), which
:func:`check_references` compares with the log and with an export, so records cut off the end of a
log leave a trace (docs/safeguards.md, "Cross-checks").
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import os
import pwd
import socket
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import nacl.signing

from ..errors import HostError, IntegrityError, TrustError, UsageError
from ..crypto.keys import MAX_KEY_FILE_BYTES, PublicKey, pem_decode, pem_encode
from ..kit import Malformed, Refusal, canonical_json, open_regular, parse_json
from .atomic import atomic_file, create_private

if TYPE_CHECKING:
    from ..formats.site import Site
    from ..safeguards import SiteDecision
    from ..trust import VerifiedManifest

DEFAULT_LOG = Path("/var/log/gapship/audit.jsonl")
DEFAULT_HOST_KEY = Path("/var/lib/gapship/host.key")
AUDIT_VERSION = 1
GENESIS = "sha256:" + "0" * 64
MAX_LINE_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 2000
EXPORT_FORMAT = "gapship-audit-export"
# DER PKCS#8 PrivateKeyInfo for Ed25519 (RFC 8410): this prefix and the 32-byte seed. The same file
# format as the bundler's keys (docs/keys.md); repeated here because the installer imports nothing
# from the bundler.
PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")


def line_hash(line: bytes) -> str:
    """The chain hash of one line: SHA-256 over its exact bytes, without the trailing newline."""
    return "sha256:" + hashlib.sha256(line).hexdigest()


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def who() -> dict[str, object]:
    """Who runs this command. ``user`` comes from the real uid, not from $USER; ``sudo_user`` is
    what sudo says (informational: the caller's environment sets it)."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {"user": user, "uid": uid, "euid": os.geteuid(), "host": socket.gethostname(), "pid": os.getpid(),
            "sudo_user": os.environ.get("SUDO_USER")}


def short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "..."


# -- appending ---------------------------------------------------------------------------------


def decision_record(*, command: str, params: Mapping[str, object], verified: VerifiedManifest | None,
                    site: Site | None, decision: SiteDecision | None, outcome: str,
                    reason: Mapping[str, object]) -> dict[str, object]:
    """One audit record of a verify or install decision (docs/safeguards.md, "The audit log"):
    who ran which command with which arguments, on which bundle and site, ``accepted`` or ``refused``
    (``outcome``) and why (``reason``: the error's code, kind and message, or the success)."""
    v = verified
    return {
        "time": now_utc(),
        "who": who(),
        "command": command,
        "params": dict(params),
        "bundle": {"name": v.manifest.name, "version": v.manifest.version} if v else None,
        "manifest_digest": v.digest if v else None,
        "signers": list(v.signers) if v else [],
        "site": site.site_id if site else None,
        "authorizations": [a.digest for a in decision.authorizations] if decision else [],
        "decision": outcome,
        "reason": {"code": reason.get("code"), "kind": reason.get("kind"),
                   "message": short(str(reason.get("message")))},
    }


@dataclass(frozen=True)
class AuditRef:
    """Where one record sits in one log: what a receipt and a floor change keep of the intent record
    of their install, so that a record cut off the end of the log leaves a trace."""

    log: str  # the log's absolute path
    seq: int
    record: str  # line_hash of the record's line

    def to_dict(self) -> dict[str, object]:
        return {"log": self.log, "seq": self.seq, "record": self.record}

    @classmethod
    def from_value(cls, value: object) -> AuditRef | None:
        """A reference read back from a receipt or the state, or None when it is not one."""
        if not isinstance(value, dict):
            return None
        log, seq, record = value.get("log"), value.get("seq"), value.get("record")
        if not (isinstance(log, str) and isinstance(seq, int) and not isinstance(seq, bool) and seq > 0
                and isinstance(record, str)):
            return None
        return cls(log=log, seq=seq, record=record)


def log_name(path: Path) -> str:
    """How a reference names a log: its absolute path with the directories' symlinks resolved."""
    return str(path.parent.resolve() / path.name)


class AuditLog:
    """An open audit log. :meth:`open` is called when a command starts and checks the log's tail, so
    a log that cannot be written, or that ends in damage, stops the command (exit 7) before it
    changes anything; :meth:`append` adds a record."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.name = log_name(path)
        self._fd = fd

    @classmethod
    def open(cls, path: Path) -> AuditLog:
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise HostError(f"cannot open the audit log {path}: {e.strerror}", subject=str(path)) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise HostError(f"audit log {path} is not a regular file", subject=str(path))
        log = cls(path, fd)
        try:
            with log._lock(fcntl.LOCK_SH):
                log._tail()  # a damaged tail refuses now, before the command does anything
        except BaseException:
            log.close()
            raise
        return log

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Add ``seq``, ``prev`` and ``audit_version`` to ``record`` and append it as one line."""
        return self._append(record)[0]

    def add(self, record: Mapping[str, Any]) -> AuditRef:
        """:meth:`append`, returning where the record landed."""
        full, line = self._append(record)
        return AuditRef(log=self.name, seq=int(full["seq"]), record=line_hash(line))

    def _append(self, record: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        try:
            with self._lock(fcntl.LOCK_EX):
                seq, prev = self._tail()
                full = {**record, "audit_version": AUDIT_VERSION, "seq": seq + 1, "prev": prev}
                line = canonical_json(full)
                if len(line) + 1 > MAX_LINE_BYTES:
                    raise HostError(f"audit record of {len(line) + 1} bytes is over the {MAX_LINE_BYTES}-byte cap",
                                    subject=str(self.path))
                self._write_durably(line + b"\n")
        except OSError as e:
            raise HostError(f"cannot append to the audit log {self.path}: {e.strerror or e}",
                            subject=str(self.path)) from None
        return full, line

    def _write_durably(self, data: bytes) -> None:
        """One ``write`` (O_APPEND keeps it whole), then ``fsync``. Called under the exclusive lock:
        if either fails (disk full, quota, I/O error), whatever part of ``data`` landed is cut off
        again, so the log never keeps a torn line or a record that was not made durable."""
        size = os.fstat(self._fd).st_size
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write (" + os.strerror(errno.ENOSPC) + ")")
            os.fsync(self._fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
                os.fsync(self._fd)
            raise

    @contextmanager
    def _lock(self, kind: int) -> Iterator[None]:
        fcntl.flock(self._fd, kind)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _tail(self) -> tuple[int, str]:
        """The last line's ``seq`` and chain hash, or (0, GENESIS) for an empty log."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0, GENESIS
        n = min(size, MAX_LINE_BYTES + 1)
        data = os.pread(self._fd, n, size - n)
        if not data.endswith(b"\n"):
            torn = len(data) - data.rfind(b"\n") - 1 if b"\n" in data else (size if n == size else f"over {MAX_LINE_BYTES}")
            raise HostError(f"audit log {self.path} ends in an incomplete line ({torn} bytes after the last "
                            "record: a write was cut short); refusing to act before the record can be kept",
                            subject=str(self.path), hint=_seal_hint(self.path))
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut < 0 and n < size:
            raise HostError(f"audit log {self.path}: last line over {MAX_LINE_BYTES} bytes", subject=str(self.path),
                            hint=_seal_hint(self.path))
        last = data[cut + 1:-1]
        try:
            seq = parse_json(last, source=str(self.path), error=Malformed)["seq"]
            if not isinstance(seq, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise HostError(f"audit log {self.path}: the last line is not a gapship audit record; refusing to act "
                            "before the record can be kept", subject=str(self.path),
                            hint=_seal_hint(self.path)) from None
        return seq, line_hash(last)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _seal_hint(path: Path) -> str:
    return (f"`gapship audit verify --log {path}` shows the damage; if it is only the last line, "
            f"`gapship audit seal --log {path}` seals it (the bytes stay in the log, a record names their hash)")


class Journal:
    """The logs one command writes to (on a site host the site's log, plus ``--audit-log`` if given),
    each record appended to every one of them. :meth:`intent` records what an install is about to make
    visible and returns where; the outcome (:meth:`append`) then names each log's own intent record."""

    def __init__(self, logs: list[AuditLog]) -> None:
        self.logs = logs
        self.intents: list[AuditRef] = []

    @classmethod
    def open(cls, paths: Iterable[Path]) -> Journal:
        logs: list[AuditLog] = []
        seen: set[tuple[int, int]] = set()
        try:
            for path in paths:
                log = AuditLog.open(path)
                st = os.fstat(log._fd)
                if (st.st_dev, st.st_ino) in seen:  # the same file under two names: one record
                    log.close()
                    continue
                seen.add((st.st_dev, st.st_ino))
                logs.append(log)
        except BaseException:
            for log in logs:
                log.close()
            raise
        return cls(logs)

    def intent(self, record: Mapping[str, Any]) -> tuple[AuditRef, ...]:
        """Append ``record`` to every log, durably, before the install makes anything visible."""
        refs = tuple(log.add(record) for log in self.logs)
        self.intents.extend(refs)
        return refs

    def append(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` to every log; each log's copy names that log's intent record, if any."""
        for log in self.logs:
            mine = [r for r in self.intents if r.log == log.name]
            extra = {"intent": {"seq": mine[-1].seq, "record": mine[-1].record}} if mine else {}
            log.append({**record, **extra})

    def close(self) -> None:
        for log in self.logs:
            log.close()


# -- verifying ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogSummary:
    lines: int
    head: str  # chain hash of the last line (GENESIS for an empty log)
    body: str  # sha256 over all the bytes checked
    size: int
    mark: str | None = None  # chain hash of line ``at`` when asked (see verify_lines); not exported
    marks: Mapping[int, str] = field(default_factory=dict)  # chain hash of each line asked for in ``marks``
    sealed: tuple[int, ...] = ()  # lines that are not records, each sealed by the record after it

    def to_dict(self) -> dict[str, object]:
        return {"lines": self.lines, "head": self.head, "body_sha256": self.body, "bytes": self.size}


Visit = Callable[[Mapping[str, Any]], None]


def verify_lines(stream: IO[bytes], *, source: str, limit: int | None = None, at: int = 0,
                 marks: Set[int] = frozenset(), visit: Visit | None = None) -> LogSummary:
    """Check the chain of the lines in ``stream`` (up to ``limit`` bytes); raise
    :class:`IntegrityError` naming the first bad line. ``at``: also report line ``at``'s chain hash;
    ``marks``: the chain hash of each of these lines; ``visit`` is called with every record.

    A line that is not a record (torn, or not canonical JSON) passes only when the next line is the
    seal record that :func:`seal_log` wrote for exactly its bytes."""
    body = hashlib.sha256()
    prev, count, size = GENESIS, 0, 0
    mark = GENESIS if at == 0 else None
    found: dict[int, str] = {}
    sealed: list[int] = []
    pending: tuple[bytes, IntegrityError] | None = None  # a line that is not a record, and why
    before = GENESIS  # the chain hash before the pending line
    while limit is None or size < limit:
        want = MAX_LINE_BYTES + 1 if limit is None else min(MAX_LINE_BYTES + 1, limit - size)
        raw = stream.readline(want)
        if not raw:
            break
        count += 1
        body.update(raw)
        size += len(raw)
        if pending is not None:
            record = _seal_for(raw, count, pending[0], before)
            if record is None:
                raise pending[1]
            sealed.append(count - 1)
            pending = None
        else:
            record, problem = _parse_line(raw)
            if record is None:
                pending, before = (raw.rstrip(b"\n"), _bad(source, count, problem)), prev
                prev = line_hash(raw.rstrip(b"\n"))
                _mark(count, prev, marks, found)
                mark = prev if count == at else mark
                continue
            _check_chain(record, count, prev, source)
        prev = line_hash(raw[:-1])
        _mark(count, prev, marks, found)
        if count == at:
            mark = prev
        if visit is not None:
            visit(record)
    if pending is not None:
        raise pending[1]
    return LogSummary(lines=count, head=prev, body="sha256:" + body.hexdigest(), size=size, mark=mark,
                      marks=found, sealed=tuple(sealed))


def _mark(n: int, value: str, marks: Set[int], found: dict[int, str]) -> None:
    if n in marks:
        found[n] = value


def _bad(source: str, n: int, why: str) -> IntegrityError:
    return IntegrityError(f"{source}: line {n} {why}", subject=f"line {n}")


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The record on one line, or None and why it is not one (torn, not JSON, not canonical)."""
    if not raw.endswith(b"\n"):
        return None, f"is incomplete or over {MAX_LINE_BYTES} bytes"
    line = raw[:-1]
    try:
        record = parse_json(line, source="line", error=Malformed)
    except ValueError:
        return None, "is not JSON: it was edited"
    if not isinstance(record, dict) or canonical_json(record) != line:
        return None, "is not a canonical JSON record: it was edited"
    return record, ""


def _check_chain(record: Mapping[str, Any], n: int, prev: str, source: str) -> None:
    seq = record.get("seq")
    if seq != n:
        raise _bad(source, n, f"carries sequence number {seq!r}: a line before it was deleted, inserted or moved")
    if record.get("prev") != prev:
        if n == 1:
            raise _bad(source, n, "does not start from the genesis hash")
        raise IntegrityError(f"{source}: line {n - 1} was changed (line {n} records another hash for it)",
                             subject=f"line {n - 1}")


def _seal_for(raw: bytes, n: int, bad: bytes, before: str) -> dict[str, Any] | None:
    """Line ``n`` as the seal record of the bad line before it, or None when it is not exactly that."""
    record, _ = _parse_line(raw)
    if record is None:
        return None
    seal = record.get("sealed")
    expected = {"line": n - 1, "bytes": len(bad), "sha256": line_hash(bad), "after": before}
    if not isinstance(seal, dict) or {k: seal.get(k) for k in expected} != expected:
        return None
    if record.get("seq") != n or record.get("prev") != line_hash(bad):
        return None
    return record


@contextmanager
def _locked_reader(path: Path) -> Iterator[IO[bytes]]:
    """The log opened for reading under a shared lock, so no append lands half-way through."""
    # Streamed, not read whole; opened by the kit so a FIFO or device in its place is refused at once.
    # A symlink is followed, as open() always did (appends refuse one: AuditLog.open).
    fd, _ = open_regular(path, refuse=_refuse_log, follow_symlinks=True)
    with os.fdopen(fd, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        yield f


def _refuse_log(r: Refusal) -> Exception:
    if r.reason == "missing":
        return UsageError(f"audit log {str(r.path)!r} does not exist", subject=str(r.path))
    if r.reason == "not-regular" and r.kind != "directory":
        return HostError(f"audit log {r.path} is not a regular file", subject=str(r.path))
    return HostError(f"cannot read the audit log {r.path}: {r.strerror}", subject=str(r.path))


def verify_log(path: Path) -> LogSummary:
    with _locked_reader(path) as f:
        return verify_lines(f, source=str(path))


# -- cross-checks: what the prefix says about the log -------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """An :class:`AuditRef` found in a prefix, and where (a receipt's path, or the state's entry)."""

    source: str
    ref: AuditRef

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "seq": self.ref.seq, "record": self.ref.record}


# Given the prefixes a log's install records name, the prefixes looked at and the references found in
# them (installer/deploy/evidence.py reads them; this module does not know the prefix layout).
Gather = Callable[[Set[str]], tuple[tuple[str, ...], list[Reference]]]
MAX_PROBLEMS = 16  # references named in an export header as not matching its lines


@dataclass(frozen=True)
class RefCheck:
    """The references of the prefixes that name one log, checked against its lines."""

    log: str
    prefixes: tuple[str, ...]
    checked: int
    highest: Reference | None
    problems: tuple[dict[str, object], ...]
    problem_count: int

    def to_dict(self) -> dict[str, object]:
        return {"log": self.log, "prefixes": list(self.prefixes), "checked": self.checked,
                "highest": self.highest.to_dict() if self.highest else None, "problems": list(self.problems),
                "problem_count": self.problem_count}

    def error(self, source: str) -> IntegrityError:
        first = self.problems[0]
        more = f" ({self.problem_count} reference(s) in all)" if self.problem_count > 1 else ""
        return IntegrityError(f"{source}: {first['message']}{more}", subject=str(first["source"]))


def prefixes_named(record: Mapping[str, Any], into: set[str]) -> None:
    """A :data:`Visit` that collects the prefix of every install intent record."""
    install = record.get("install")
    prefix = install.get("prefix") if isinstance(install, dict) else None
    if isinstance(prefix, str) and prefix.startswith("/"):
        into.add(prefix)


def check_references(refs: Iterable[Reference], summary: LogSummary, *, log: str,
                     prefixes: tuple[str, ...]) -> RefCheck:
    """Every reference to ``log`` must name a line it holds, with that line's hash. ``summary`` must
    carry the marks of every sequence number referred to (:func:`referenced_lines`)."""
    mine = sorted((r for r in refs if r.ref.log == log), key=lambda r: r.ref.seq)
    problems: list[dict[str, object]] = []
    for r in mine:
        seq = r.ref.seq
        if seq > summary.lines:
            why = (f"{r.source} names audit record {seq} of {log}, but the log ends at line {summary.lines}: "
                   "records were cut off its end")
        elif summary.marks.get(seq) != r.ref.record:
            why = (f"{r.source} names audit record {seq} of {log} as {r.ref.record}, but line {seq} is another "
                   "record: the log was cut and written again from there")
        else:
            continue
        problems.append({**r.to_dict(), "message": why})
    return RefCheck(log=log, prefixes=prefixes, checked=len(mine), highest=mine[-1] if mine else None,
                    problems=tuple(problems[:MAX_PROBLEMS]), problem_count=len(problems))


def referenced_lines(refs: Iterable[Reference], log: str) -> set[int]:
    return {r.ref.seq for r in refs if r.ref.log == log}


def cross_check_log(path: Path, *, gather: Gather) -> tuple[LogSummary, RefCheck]:
    """:func:`verify_log`, then the references of the prefixes the log names (and any ``gather``
    adds) against its lines; raise :class:`IntegrityError` naming the first that does not match."""
    name = log_name(path)
    with _locked_reader(path) as f:
        named: set[str] = set()
        verify_lines(f, source=str(path), visit=lambda r: prefixes_named(r, named))
        prefixes, refs = gather(named)
        f.seek(0)
        summary = verify_lines(f, source=str(path), marks=referenced_lines(refs, name))
    check = check_references(refs, summary, log=name, prefixes=prefixes)
    if check.problems:
        raise check.error(str(path))
    return summary, check


# -- sealing a damaged tail -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SealResult:
    """What :func:`seal_log` did: the line sealed (None when the log was intact) and the seal record."""

    line: int | None
    size: int = 0
    sha256: str | None = None
    record: AuditRef | None = None

    def to_dict(self) -> dict[str, object]:
        return {"sealed": self.line is not None, "line": self.line, "bytes": self.size, "sha256": self.sha256,
                "seal_seq": self.record.seq if self.record else None,
                "seal_record": self.record.record if self.record else None}


def seal_log(path: Path) -> SealResult:
    """Seal the damaged last line of a log (a torn write, or a line that is not a record) so that the
    log can be appended to again, deleting nothing: the bad bytes stay where they are (ended by a
    newline if they had none) and a seal record after them names their length and hash and the chain
    hash before them; :func:`verify_lines` accepts exactly that pair. Refused (exit 3) when the chain
    breaks anywhere before the last line, or the last line is a record whose chain does not match:
    that is an edit, not a torn write, and stays for `audit verify` to report."""
    log = _open_existing(path)
    try:
        with log._lock(fcntl.LOCK_EX):
            return _seal_locked(log)
    except OSError as e:
        raise HostError(f"cannot seal the audit log {path}: {e.strerror or e}", subject=str(path)) from None
    finally:
        log.close()


def _open_existing(path: Path) -> AuditLog:
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"audit log {str(path)!r} does not exist", subject=str(path)) from None
    except OSError as e:
        raise HostError(f"cannot open the audit log {path}: {e.strerror}", subject=str(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HostError(f"audit log {path} is not a regular file", subject=str(path))
    return AuditLog(path, fd)


def _seal_locked(log: AuditLog) -> SealResult:
    size = os.fstat(log._fd).st_size
    n = min(size, MAX_LINE_BYTES + 1)
    data = os.pread(log._fd, n, size - n)
    complete = data.endswith(b"\n")
    cut = data.rfind(b"\n", 0, len(data) - 1) if complete else data.rfind(b"\n")
    if size and cut < 0 and n < size:
        raise IntegrityError(f"audit log {log.path}: its last line is over {MAX_LINE_BYTES} bytes, longer than any "
                             "record; gapship does not seal that: keep the log as evidence and start a new one",
                             subject=str(log.path))
    bad = data[cut + 1:-1] if complete else data[cut + 1:]
    start = size - len(bad) - (1 if complete else 0)
    with os.fdopen(os.dup(log._fd), "rb") as f:
        summary = verify_lines(f, source=str(log.path), limit=start)
    if size == 0:
        return SealResult(line=None)
    record, problem = _parse_line(bad + b"\n")
    if record is not None:
        _check_chain(record, summary.lines + 1, summary.head, str(log.path))  # an edited record is not sealed
        if complete:
            return SealResult(line=None)  # nothing is damaged
    full = {"time": now_utc(), "who": who(), "command": "audit seal", "decision": "sealed",
            "reason": {"code": 0, "kind": "sealed",
                       "message": f"line {summary.lines + 1} " + (problem or "lacked its newline") + "; sealed"},
            "sealed": {"line": summary.lines + 1, "bytes": len(bad), "sha256": line_hash(bad), "after": summary.head},
            "audit_version": AUDIT_VERSION, "seq": summary.lines + 2, "prev": line_hash(bad)}
    line = canonical_json(full)
    log._write_durably((b"" if complete else b"\n") + line + b"\n")
    return SealResult(line=summary.lines + 1, size=len(bad), sha256=line_hash(bad),
                      record=AuditRef(log=log.name, seq=summary.lines + 2, record=line_hash(line)))


# -- host key and exports ------------------------------------------------------------------------


@dataclass(frozen=True)
class HostKey:
    seed: bytes
    path: Path

    @property
    def public(self) -> PublicKey:
        return PublicKey(raw=bytes(nacl.signing.SigningKey(self.seed).verify_key))

    def sign(self, message: bytes) -> bytes:
        return nacl.signing.SigningKey(self.seed).sign(message).signature

    @property
    def public_path(self) -> Path:
        return self.path.with_suffix(".pub")


def host_key(path: Path) -> tuple[HostKey, bool]:
    """Load the host key, or make it at first use (0600, never overwritten, ``.pub`` beside it).
    Return the key and whether it was just made."""
    try:
        fd, st = open_regular(path, refuse=_refuse_host_key)
    except _NoHostKey:
        return _make_host_key(path), True
    try:
        if st.st_mode & 0o077:
            raise HostError(f"host key {path} must be a regular file of mode 0600 (it is {st.st_mode & 0o777:o})",
                            subject=str(path))
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise HostError(f"host key {path} is larger than the {MAX_KEY_FILE_BYTES}-byte cap", subject=str(path))
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    der = pem_decode(data, "PRIVATE KEY", source=str(path))
    if len(der) != len(PKCS8_PREFIX) + 32 or not der.startswith(PKCS8_PREFIX):
        raise UsageError(f"{path}: not an unencrypted Ed25519 PKCS#8 private key", subject=str(path))
    key = HostKey(seed=der[len(PKCS8_PREFIX):], path=path)
    if not key.public_path.exists():  # the public half is derived, so it can always be rewritten
        try:
            _write_public(key)
        except OSError as e:
            raise HostError(f"cannot write {key.public_path}: {e.strerror}", subject=str(key.public_path)) from None
    return key, False


class _NoHostKey(Exception):
    """host_key's signal: there is no key yet, so make one."""


def _refuse_host_key(r: Refusal) -> Exception:
    if r.reason == "missing":
        return _NoHostKey()
    if r.reason == "not-regular" and r.kind != "directory":  # a FIFO or device: named as such, never opened twice
        return HostError(f"host key {r.path} {r.strerror}; it must be a regular file of mode 0600", subject=str(r.path))
    if r.reason == "not-regular" and r.mode is not None:
        return HostError(f"host key {r.path} must be a regular file of mode 0600 (it is {r.mode & 0o777:o})",
                         subject=str(r.path))
    return HostError(f"cannot read the host key {r.path}: {r.strerror}", subject=str(r.path))


def _write_public(key: HostKey) -> None:
    with atomic_file(key.public_path) as f:
        f.write(key.public.to_pem())


def _make_host_key(path: Path) -> HostKey:
    key = HostKey(seed=bytes(nacl.signing.SigningKey.generate()), path=path)
    try:
        create_private(path, pem_encode(PKCS8_PREFIX + key.seed, "PRIVATE KEY"))
        _write_public(key)
    except OSError as e:
        raise HostError(f"cannot create the host key {path}: {e.strerror}", subject=str(path)) from None
    return key


@dataclass(frozen=True)
class ExportSummary:
    header: Mapping[str, Any]
    log: LogSummary
    references: RefCheck | None = None  # export_log's cross-check against the prefixes (also in the header)

    def to_dict(self) -> dict[str, object]:
        return {**self.log.to_dict(), "host": self.header.get("host"), "exported_at": self.header.get("exported_at"),
                "keyid": self.header.get("keyid"), "source_log": self.header.get("log")}


def export_log(log: Path, out: Path, *, key: HostKey, gather: Gather | None = None) -> ExportSummary:
    """Write a signed copy of ``log`` to ``out``: a header line (counts, head and body hashes), a
    signature line over the header's exact bytes, then the log's lines verbatim. A log whose chain
    is broken is not exported: signing it would vouch for it.

    With ``gather``, the references that the prefixes named by the log hold are checked against its
    lines and the result goes into the signed header (``references``): an export of a log whose end
    was cut is still written, and says what the prefix names that the log no longer holds, so the
    trail that crosses the gap shows the cut (the caller then reports it, exit 3)."""
    check_export_target(out)
    with _locked_reader(log) as f:
        check: RefCheck | None = None
        if gather is None:
            summary = verify_lines(f, source=str(log))
        else:
            summary, check = _summary_with_references(f, log, gather)
        fields: dict[str, object] = {
            "format": EXPORT_FORMAT, "format_version": 1, "host": socket.gethostname(), "log": str(log),
            "exported_at": now_utc(), "keyid": key.public.keyid, **summary.to_dict(),
        }
        if check is not None:
            fields["references"] = check.to_dict()
        header = canonical_json(fields)
        signature = canonical_json({"keyid": key.public.keyid,
                                    "signature": base64.b64encode(key.sign(header)).decode("ascii")})
        f.seek(0)
        _write_export(out, header + b"\n" + signature + b"\n", f, summary)
    return ExportSummary(header=parse_json(header, source=str(out), error=HostError), log=summary, references=check)


def _summary_with_references(f: IO[bytes], log: Path, gather: Gather) -> tuple[LogSummary, RefCheck]:
    name = log_name(log)
    named: set[str] = set()
    verify_lines(f, source=str(log), visit=lambda r: prefixes_named(r, named))
    prefixes, refs = gather(named)
    f.seek(0)
    summary = verify_lines(f, source=str(log), marks=referenced_lines(refs, name))
    f.seek(0)
    return summary, check_references(refs, summary, log=name, prefixes=prefixes)


def check_export_target(out: Path) -> None:
    """Refuse an export target that cannot become a new file: one that exists (a file, a folder, a
    link), or whose folder is missing, not a folder or not writable (docs/cli.md, ``audit export``).
    The CLI calls it before it makes the host key, so a mistyped ``--out`` leaves nothing behind."""
    folder = out.parent
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise UsageError(f"{folder} is not a folder (--out {out})", subject=str(folder)) from None
    except OSError as e:
        raise HostError(f"cannot write {out}: {e.strerror}", subject=str(out)) from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{out} is a folder; --out names the export file to write in it", subject=str(out))
        raise UsageError(f"{out} already exists; refusing to overwrite it", subject=str(out))
    if not folder.is_dir():
        raise UsageError(f"folder {folder} does not exist (--out {out}); make it first", subject=str(folder))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise HostError(f"cannot write into folder {folder}: permission denied or a read-only filesystem",
                        subject=str(folder))


def _write_export(out: Path, head: bytes, log: IO[bytes], summary: LogSummary) -> None:
    """Copy exactly the bytes that were checked, hashing them again as they are written. An OSError
    (the folder went away or became read-only after check_export_target) is the host's."""
    try:
        with atomic_file(out) as f:
            f.write(head)
            body, left = hashlib.sha256(), summary.size
            while left:
                block = log.read(min(left, 1024 * 1024))
                if not block:
                    break
                body.update(block)
                f.write(block)
                left -= len(block)
            if "sha256:" + body.hexdigest() != summary.body:
                raise IntegrityError(f"audit log {log.name} changed while it was exported", subject=str(log.name))
    except OSError as e:
        raise HostError(f"cannot write {out}: {e.strerror}", subject=str(out)) from None


def verify_export(path: Path, *, pubkey: PublicKey, previous: ExportSummary | None = None) -> ExportSummary:
    """Check an export with only the host's public key: signature over the header, then the chain
    of every line, then that the lines are exactly those the header counts and hashes. With the
    ``previous`` export of the same log, also check that this one extends it: the only way to
    catch lines cut off the end of a log, or a log rewritten since, is against a copy made before."""
    fd, _ = open_regular(path, refuse=_refuse_export, follow_symlinks=True)  # streamed, like the log
    with os.fdopen(fd, "rb") as f:
        header_line = f.readline(MAX_LINE_BYTES + 1).rstrip(b"\n")
        sig_line = f.readline(MAX_LINE_BYTES + 1).rstrip(b"\n")
        header = _check_export_signature(header_line, sig_line, pubkey, source=str(path))
        refs = header.get("references")
        highest = refs.get("highest") if isinstance(refs, dict) else None
        marks = {highest["seq"]} if isinstance(highest, dict) and isinstance(highest.get("seq"), int) else set()
        summary = verify_lines(f, source=f"{path} (exported log)", at=previous.log.lines if previous else 0,
                               marks=marks)
    for name, value in summary.to_dict().items():
        if header.get(name) != value:
            raise IntegrityError(f"{path}: the exported lines do not match the signed header ({name}: "
                                 f"{header.get(name)!r} signed, {value!r} found)", subject=name)
    if previous is not None:
        _check_extends(path, summary, previous)
    if refs is not None:
        _check_export_references(path, refs, summary)
    return ExportSummary(header=header, log=summary)


def _check_export_references(path: Path, refs: object, summary: LogSummary) -> None:
    """The cross-check the host made when it exported (:func:`export_log`): every reference the
    prefixes held must name one of the exported lines."""
    if not isinstance(refs, dict) or not isinstance(refs.get("problems"), list):
        raise IntegrityError(f"{path}: the signed header's references are not a gapship cross-check", subject="references")
    problems = [p for p in refs["problems"] if isinstance(p, dict)]
    if problems or refs["problems"]:
        count = refs.get("problem_count")
        more = f" ({count} reference(s) in all)" if isinstance(count, int) and count > 1 else ""
        first = str(problems[0].get("message")) if problems else "a reference does not match"
        raise IntegrityError(f"{path}: when it was exported, {first}{more}", subject=str(problems[0].get("source"))
                             if problems else "references")
    highest = refs.get("highest")
    if highest is None:
        return
    seq = highest.get("seq") if isinstance(highest, dict) else None
    if not isinstance(seq, int) or seq > summary.lines or summary.marks.get(seq) != highest.get("record"):
        raise IntegrityError(f"{path}: the signed header names audit record {seq!r} of the prefix's newest reference, "
                             "but the exported lines do not hold it", subject="references")


def _refuse_export(r: Refusal) -> Exception:
    return UsageError(f"cannot read export {r.path}: {r.strerror}", subject=str(r.path))


def _check_extends(path: Path, summary: LogSummary, previous: ExportSummary) -> None:
    old = previous.log
    if summary.lines < old.lines:
        raise IntegrityError(f"{path} holds {summary.lines} line(s), fewer than the {old.lines} of the previous "
                             "export: lines were deleted from the log", subject=str(path))
    if summary.mark != old.head:
        raise IntegrityError(f"{path} does not extend the previous export: its first {old.lines} line(s) differ "
                             "(the log was rewritten since)", subject=str(path))


def _check_export_signature(header_line: bytes, sig_line: bytes, pubkey: PublicKey, *, source: str) -> dict[str, Any]:
    try:
        sig = parse_json(sig_line, source=source, error=Malformed)
        signature = base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise TrustError(f"{source}: not a gapship audit export (no signature line)", subject=source) from None
    if sig.get("keyid") != pubkey.keyid:
        raise TrustError(f"{source} was signed by host key {str(sig.get('keyid'))[:16]}, not by the given key "
                         f"{pubkey.keyid[:16]}", subject=source)
    pubkey.verify(header_line, signature, subject=source)
    try:
        header = parse_json(header_line, source=source, error=Malformed)
    except ValueError:
        raise TrustError(f"{source}: signed header is not JSON", subject=source) from None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT or header.get("keyid") != pubkey.keyid:
        raise TrustError(f"{source}: signed header is not a gapship audit export header", subject=source)
    return header
