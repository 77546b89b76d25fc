"""The host's audit log: a hash-chained JSON Lines file, and signed exports of it (docs/safeguards.md,
"The audit log").

Each line is one canonical-JSON record (sorted keys, no whitespace) carrying ``seq`` (its 1-based line
number) and ``prev``, the SHA-256 of the previous line's exact bytes (without its newline); the first
line's ``prev`` is :data:`GENESIS`. Editing, deleting, inserting or reordering a line therefore breaks
the chain at a line :func:`verify_log` names. Nothing on the host can stop root from rewriting the
whole chain, or from cutting lines off its end: what catches that is an export, which a host key signs
and which travels back across the gap, and which a later export must extend.

Appends are atomic: ``O_APPEND``, an exclusive ``flock`` while the last line is read and the new one
is written with a single ``write``, then ``fsync``.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import pwd
import socket
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import nacl.signing

from ..errors import HostError, IntegrityError, TrustError, UsageError
from ..crypto.keys import MAX_KEY_FILE_BYTES, PublicKey, pem_decode, pem_encode
from ..kit import Malformed, Refusal, canonical_json, open_regular, parse_json

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


class AuditLog:
    """An open audit log. :meth:`open` is called when a command starts, so a log that cannot be
    written stops the command (exit 7) before it changes anything; :meth:`append` at the end."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
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
        return cls(path, fd)

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Add ``seq``, ``prev`` and ``audit_version`` to ``record`` and append it as one line."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                seq, prev = self._tail()
                full = {**record, "audit_version": AUDIT_VERSION, "seq": seq + 1, "prev": prev}
                line = canonical_json(full) + b"\n"
                if len(line) > MAX_LINE_BYTES:
                    raise HostError(f"audit record of {len(line)} bytes is over the {MAX_LINE_BYTES}-byte cap",
                                    subject=str(self.path))
                if os.write(self._fd, line) != len(line):  # one write: O_APPEND keeps it whole
                    raise HostError(f"short write to the audit log {self.path}", subject=str(self.path))
                os.fsync(self._fd)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError as e:
            raise HostError(f"cannot append to the audit log {self.path}: {e.strerror}", subject=str(self.path)) from None
        return full

    def _tail(self) -> tuple[int, str]:
        """The last line's ``seq`` and chain hash, or (0, GENESIS) for an empty log."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0, GENESIS
        n = min(size, MAX_LINE_BYTES + 1)
        data = os.pread(self._fd, n, size - n)
        if not data.endswith(b"\n"):
            raise HostError(f"audit log {self.path} ends in an incomplete line; run `gapship audit verify`",
                            subject=str(self.path))
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut < 0 and n < size:
            raise HostError(f"audit log {self.path}: last line over {MAX_LINE_BYTES} bytes", subject=str(self.path))
        last = data[cut + 1:-1]
        try:
            seq = parse_json(last, source=str(self.path), error=Malformed)["seq"]
            if not isinstance(seq, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise HostError(f"audit log {self.path}: the last line is not a gapship audit record; "
                            "run `gapship audit verify`", subject=str(self.path)) from None
        return seq, line_hash(last)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- verifying ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogSummary:
    lines: int
    head: str  # chain hash of the last line (GENESIS for an empty log)
    body: str  # sha256 over all the bytes checked
    size: int
    mark: str | None = None  # chain hash of line ``at`` when asked (see verify_lines); not exported

    def to_dict(self) -> dict[str, object]:
        return {"lines": self.lines, "head": self.head, "body_sha256": self.body, "bytes": self.size}


def verify_lines(stream: IO[bytes], *, source: str, limit: int | None = None, at: int = 0) -> LogSummary:
    """Check the chain of the lines in ``stream`` (up to ``limit`` bytes); raise
    :class:`IntegrityError` naming the first bad line. ``at``: also report line ``at``'s chain hash."""
    body = hashlib.sha256()
    prev, count, size = GENESIS, 0, 0
    mark = GENESIS if at == 0 else None
    while limit is None or size < limit:
        want = MAX_LINE_BYTES + 1 if limit is None else min(MAX_LINE_BYTES + 1, limit - size)
        raw = stream.readline(want)
        if not raw:
            break
        count += 1
        body.update(raw)
        size += len(raw)
        prev = _check_line(raw, count, prev, source)
        if count == at:
            mark = prev
    return LogSummary(lines=count, head=prev, body="sha256:" + body.hexdigest(), size=size, mark=mark)


def _check_line(raw: bytes, n: int, prev: str, source: str) -> str:
    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"{source}: line {n} {why}", subject=f"line {n}")

    if not raw.endswith(b"\n"):
        raise bad(f"is incomplete or over {MAX_LINE_BYTES} bytes")
    line = raw[:-1]
    try:
        record = parse_json(line, source=source, error=Malformed)
    except ValueError:
        raise bad("is not JSON: it was edited") from None
    if not isinstance(record, dict) or canonical_json(record) != line:
        raise bad("is not a canonical JSON record: it was edited")
    seq = record.get("seq")
    if seq != n:
        raise bad(f"carries sequence number {seq!r}: a line before it was deleted, inserted or moved")
    if record.get("prev") != prev:
        if n == 1:
            raise bad("does not start from the genesis hash")
        raise IntegrityError(f"{source}: line {n - 1} was changed (line {n} records another hash for it)",
                             subject=f"line {n - 1}")
    return line_hash(line)


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
            _write_new(key.public_path, key.public.to_pem(), 0o644, replace=True)
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


def _make_host_key(path: Path) -> HostKey:
    key = HostKey(seed=bytes(nacl.signing.SigningKey.generate()), path=path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, pem_encode(PKCS8_PREFIX + key.seed, "PRIVATE KEY"))
            os.fsync(fd)
        finally:
            os.close(fd)
        _write_new(key.public_path, key.public.to_pem(), 0o644, replace=True)
    except OSError as e:
        raise HostError(f"cannot create the host key {path}: {e.strerror}", subject=str(path)) from None
    return key


def _write_new(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write ``path`` atomically (temporary file, fsync, rename)."""
    if not replace and (path.exists() or path.is_symlink()):
        raise UsageError(f"{path} already exists; refusing to overwrite it", subject=str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ExportSummary:
    header: Mapping[str, Any]
    log: LogSummary

    def to_dict(self) -> dict[str, object]:
        return {**self.log.to_dict(), "host": self.header.get("host"), "exported_at": self.header.get("exported_at"),
                "keyid": self.header.get("keyid"), "source_log": self.header.get("log")}


def export_log(log: Path, out: Path, *, key: HostKey) -> ExportSummary:
    """Write a signed copy of ``log`` to ``out``: a header line (counts, head and body hashes), a
    signature line over the header's exact bytes, then the log's lines verbatim. A log whose chain
    is broken is not exported: signing it would vouch for it."""
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out} already exists; refusing to overwrite it", subject=str(out))
    with _locked_reader(log) as f:
        summary = verify_lines(f, source=str(log))
        header = canonical_json({
            "format": EXPORT_FORMAT, "format_version": 1, "host": socket.gethostname(), "log": str(log),
            "exported_at": now_utc(), "keyid": key.public.keyid, **summary.to_dict(),
        })
        signature = canonical_json({"keyid": key.public.keyid,
                                    "signature": base64.b64encode(key.sign(header)).decode("ascii")})
        f.seek(0)
        _write_export(out, header + b"\n" + signature + b"\n", f, summary)
    return ExportSummary(header=parse_json(header, source=str(out), error=HostError), log=summary)


def _write_export(out: Path, head: bytes, log: IO[bytes], summary: LogSummary) -> None:
    """Copy exactly the bytes that were checked, hashing them again as they are written."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
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
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise HostError(f"cannot write {out}: {e.strerror}", subject=str(out)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        summary = verify_lines(f, source=f"{path} (exported log)", at=previous.log.lines if previous else 0)
    for field, value in summary.to_dict().items():
        if header.get(field) != value:
            raise IntegrityError(f"{path}: the exported lines do not match the signed header ({field}: "
                                 f"{header.get(field)!r} signed, {value!r} found)", subject=field)
    if previous is not None:
        _check_extends(path, summary, previous)
    return ExportSummary(header=header, log=summary)


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
