"""Installing a verified bundle under a prefix (docs/format.md, "Install layout").

``PREFIX/<name>/<version>/`` holds the files, ``receipt.json``, and copies of ``manifest.json`` and
``signatures/``; ``PREFIX/<name>/current`` is a symlink to the active version. Files are written into a
private ``.staging-*`` directory that becomes the version directory by one rename, after every chunk
and file hash matched and the data reached the disk; ``current`` is then switched by another rename.
A lock (``PREFIX/<name>/.lock``) keeps a second install of the same bundle name out, and the next
install removes whatever staging litter an interrupted one left behind. Before any of it, the prefix is checked
like ssh's StrictModes (:mod:`..host.strict`); a version directory that is already there is adopted
only once :mod:`.adopt` found it to be exactly what this install writes.

A bundle with Python dependencies also gets ``PREFIX/<name>/<version>/venv`` (docs/dependencies.md).
Venvs are not relocatable (``pyvenv.cfg`` and every script hold absolute paths), so the venv cannot
be built in the staging directory and renamed. Instead:

1. before anything is written, :func:`~.deps.plan_dependencies` checks that the host fits;
2. the staging directory gets the verified files, the manifest copies and an ``.incomplete`` marker,
   but no receipt, and is renamed to the version directory (``current`` still points elsewhere); only
   the marker is flushed before the rename, so that the directory is never on disk without it;
3. the venv is created at its final path inside the version directory, and one ``syncfs`` flushes
   the staged files and the venv together;
4. ``receipt.json`` is written last (atomically), then the marker removed, then ``current`` switched.

A version directory is complete exactly when it holds ``receipt.json``. One that holds the marker
and no receipt is an interrupted install: the next run removes it under the lock (it can never be the
target of ``current``, which is switched only after the receipt exists). If the venv cannot be made,
the version directory is removed at once and the previous ``current`` stays.

Nothing becomes visible before it is on record (docs/safeguards.md, "The audit log"; docs/trust.md,
"Anti-rollback"). The order, for every install:

1. stage and flush the files (and, with dependencies, rename and make the venv);
2. append the audit *intent* record, durably (``record_intent``; the CLI's audit log);
3. write ``receipt.json``, which keeps the intent's reference (sequence number and line hash);
4. rename the staging directory into place;
5. raise the floor in the host state, which keeps the receipt's hash and the same reference;
6. switch ``current``; the CLI then appends the outcome record.

A failure up to 5 leaves the previous ``current`` active and removes the new version directory; a
failure of 6 leaves the floor raised and the complete version beside ``current``, and a plain rerun
finishes it (the state's entry names its receipt). The state directory is checked writable before
step 1, so a read-only one refuses before any work.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import secrets
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..provenance import VerifiedProvenance, install_provenance
from ..sbom import make_read_only
from .. import __version__
from .extract import extract_payload
from ..host.atomic import atomic_file, fsync_dir
from ..host.fs import remove_tree
from ..host.audit import AuditRef, who as audit_who
from ..bundle.files import SIGNATURES
from .deps import DependencyPlan, create_venv, plan_dependencies
from ..errors import HostError, IntegrityError, PolicyError
from ..crypto.hashing import Progress, no_progress
from ..formats.manifest import Manifest
from ..kit import Malformed, canonical_json, parse_json, read_bounded, read_optional
from ..safeguards import SiteDecision, write_site_records
from ..host.state import STATE_DIR, HostState, StateSnapshot
from ..host.sitemark import check_site_marker, mark_site
from ..host.strict import check_dir, check_prefix, make_dirs
from .adopt import check_version_dir
from .delta import fill_from_base, find_base, plan_from_base, share_installed
from ..host.share import ShareCounts
from ..trust import VerifiedManifest, installed_record, prefix_floor, recheck_floor
from .floor import kept_floor
from ..bundle.source import source_for

CURRENT = "current"
RECEIPT = "receipt.json"
MAX_RECEIPT_BYTES = 1024 * 1024  # a receipt is a few hundred bytes; this bounds what status and reinstall read
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
INCOMPLETE = ".incomplete"
REMOVING_PREFIX = ".removing-"  # a version directory being removed (deploy/prune.py), out of view


@dataclass(frozen=True)
class InstallResult:
    name: str
    version: str
    path: Path
    manifest_digest: str
    signers: tuple[str, ...]
    files: int
    bytes: int
    status: str  # "installed" | "already-installed"
    previous: str | None
    overrides: tuple[str, ...] = ()  # "reinstall" / "downgrade": an --allow-* flag was needed (docs/trust.md)
    venv: Path | None = None
    base: dict[str, object] | None = None  # a delta's base (docs/format.md, 11.1)
    shared: dict[str, int] | None = None  # files made from installed ones: reflink/hardlink/copy counts

    def to_dict(self) -> dict[str, object]:
        return {
            "base": self.base,
            "shared": self.shared,
            "status": self.status,
            "bundle": {"name": self.name, "version": self.version},
            "path": str(self.path),
            "manifest_digest": self.manifest_digest,
            "signers": list(self.signers),
            "files": self.files,
            "bytes": self.bytes,
            "previous": self.previous,
            "overrides": list(self.overrides),
            "venv": str(self.venv) if self.venv is not None else None,
        }


@dataclass(frozen=True)
class Intent:
    """What an install is about to make visible: the audit intent record is written from it, and
    must be durable before anything becomes visible (the module docstring, step 2)."""

    name: str
    version: str
    manifest_digest: str
    prefix: str  # absolute
    previous: str | None  # what ``current`` points at now
    floor: str | None  # the floor before (the state's or the prefix's, the higher)
    new_floor: str | None
    overrides: tuple[str, ...]
    status: str  # "installed" | "already-installed"

    def to_dict(self) -> dict[str, object]:
        return {"bundle": {"name": self.name, "version": self.version}, "manifest_digest": self.manifest_digest,
                "prefix": self.prefix, "previous": self.previous, "floor": self.floor, "new_floor": self.new_floor,
                "overrides": list(self.overrides), "status": self.status}

    @property
    def message(self) -> str:
        return (f"about to make {self.name} {self.version} current under {self.prefix}"
                f" (was {self.previous or 'none'}; floor {self.floor or 'none'} -> {self.new_floor or 'none'})")


RecordIntent = Callable[[Intent], Sequence[AuditRef]]


def install(bundle: Path, verified: VerifiedManifest, *, prefix: Path, progress: Progress = no_progress,
            state: HostState | None = None, site: SiteDecision | None = None,
            python: str | None = None, record_intent: RecordIntent | None = None,
            compile_bytecode: bool = False, provenance: VerifiedProvenance | None = None) -> InstallResult:
    """Install ``verified`` from the bundle directory ``bundle`` into ``prefix``; return or raise.
    On any failure the previous ``current`` and every installed version are left as they were.

    With ``state``, the anti-rollback floor is checked again under the lock, against the state and the
    versions the prefix holds (:func:`~.floor.kept_floor`), and raised before ``current`` switches
    (docs/trust.md, "Anti-rollback"). ``record_intent`` is called once, before anything becomes visible,
    and returns the audit references the receipt and the state keep (the module docstring).
    With a ``site`` decision (docs/safeguards.md), models not enabled there are not written.
    ``python`` is the interpreter for the dependencies' venv (default: the one running gapship);
    ``compile_bytecode`` whether its Python files are compiled to bytecode. A verified ``provenance``
    (:func:`~..provenance.load_provenance`) is installed read-only beside the files, as the SBOM is
    (docs/sbom.md)."""
    m = verified.manifest
    source_for(bundle).check_names(m)  # the signed chunk list, nothing missing and nothing extra
    deps = plan_dependencies(bundle, verified, python=python)  # refuses a mismatch before any write
    home = prefix / m.name
    check_prefix(prefix, home=home, state_dir=prefix / STATE_DIR)  # StrictModes, before any read or write
    fresh = not (home.exists() or home.is_symlink())
    _make_dirs(home)
    with locked(home, forget_on_error=fresh), as_host_error(home):
        check_site_marker(prefix, site.site if site else None)
        _remove_staging_litter(home)
        if state is not None:
            state.check_writable()  # a floor that cannot be raised refuses before any work
        snapshot = state.load() if state else None
        previous = active_version(home)
        _remove_incomplete_versions(home, previous)
        target = home / m.version
        plan = _plan_floor(home, verified, snapshot, previous, target)
        overrides = plan.overrides
        intend = _intender(record_intent, verified, prefix, previous, plan)
        if target.exists() or target.is_symlink():
            receipt = _check_same_bundle(target, verified)
            check_version_dir(target, verified, site=site, deps=deps, receipt=receipt, progress=progress,
                              provenance=provenance)
            refs = intend("already-installed")
            _record(state, snapshot, verified, plan, receipt=_receipt_digest(target), audit=refs)
            mark_site(prefix, site.site if site else None)
            _switch_current(home, m.version)
            return _result(verified, target, "already-installed", previous, overrides, deps,
                           shared=receipt.get("shared"))
        select = site.select if site else None
        # A delta's base is found, and every file it takes from it mapped, before anything is written.
        reuse = plan_from_base(m, find_base(prefix, m.base, needed_by=m), select) if m.base is not None else []
        staging = Path(_mkdtemp(home))
        record = _ReceiptFacts(overrides=overrides, site=site, provenance=provenance)
        with _Flush(staging) as flush:  # opened before anything is written: see _Flush
            try:
                extract_payload(bundle, m, staging, progress=progress, select=select)
                share_installed(staging, m, home, skip=m.version, select=select, counts=record.shared)
                fill_from_base(staging, m, reuse, record.shared)
                _write_records(staging, verified, record, marker=deps is not None)
                if deps is None:
                    refs = intend("installed")
                    _write_receipt(staging, verified, None, record, refs)
                    flush.now()
                else:  # one syncfs, after the venv (_finish_dependencies); until then the marker, durable
                    _fsync_file(staging / INCOMPLETE)  # first, says what the version directory is
                    fsync_dir(staging)
                os.rename(staging, target)
                fsync_dir(home)
            except BaseException:
                remove_tree(staging)
                raise
            if deps is not None:
                refs = _finish_dependencies(target, verified, deps, record, lambda: intend("installed"),
                                            compile_bytecode=compile_bytecode, flush=flush)
        _raise_floor(state, snapshot, verified, plan, target, refs)
        mark_site(prefix, site.site if site else None)
        _switch_current(home, m.version)
    return _result(verified, target, "installed", previous, overrides, deps, shared=record.shared.to_dict())


@dataclass(frozen=True)
class _FloorPlan:
    """The floor decision taken under the lock: the overrides it needed, the highest version the
    prefix holds a verified manifest of, and whether this run finishes an interrupted install."""

    overrides: tuple[str, ...] = ()
    kept: str | None = None
    resuming: bool = False
    floor: str | None = None
    new_floor: str | None = None


def _plan_floor(home: Path, verified: VerifiedManifest, snapshot: StateSnapshot | None, previous: str | None,
                target: Path) -> _FloorPlan:
    """Check the floor again under the lock (docs/trust.md, "Anti-rollback"). The version's own
    directory counts only once it is current: until then it may be this very install, interrupted."""
    if snapshot is None:
        return _FloorPlan()
    m = verified.manifest
    entry = snapshot.bundles.get(m.name)
    resuming = (previous != m.version and entry is not None and entry.receipt is not None
                and entry.receipt == _receipt_digest(target))
    above, _ = prefix_floor(m.name, snapshot, kept=None, root=verified.root)
    kept = kept_floor(home, verified, above=above, skip=None if previous == m.version else m.version)
    overrides = recheck_floor(verified, snapshot, kept=kept, resuming=resuming)
    floor, _ = prefix_floor(m.name, snapshot, kept=kept, root=verified.root)
    new = installed_record(verified, snapshot, overrides=overrides, at=datetime.now(timezone.utc), by="", kept=kept)
    return _FloorPlan(overrides=overrides, kept=kept, resuming=resuming, floor=floor, new_floor=new.floor)


def _intender(record_intent: RecordIntent | None, verified: VerifiedManifest, prefix: Path, previous: str | None,
              plan: _FloorPlan) -> Callable[[str], tuple[AuditRef, ...]]:
    def intend(status: str) -> tuple[AuditRef, ...]:
        if record_intent is None:
            return ()
        m = verified.manifest
        return tuple(record_intent(Intent(
            name=m.name, version=m.version, manifest_digest=verified.digest, prefix=os.path.abspath(prefix),
            previous=previous, floor=plan.floor, new_floor=plan.new_floor, overrides=plan.overrides, status=status)))
    return intend


def _finish_dependencies(target: Path, verified: VerifiedManifest, deps: DependencyPlan,
                         record: _ReceiptFacts, intend: Callable[[], tuple[AuditRef, ...]], *,
                         compile_bytecode: bool, flush: _Flush) -> tuple[AuditRef, ...]:
    """Steps 3 and 4 of the module docstring; on any failure the (never current) version goes.
    The version directory is 0700 while the venv is made: the venv's files are created under the
    caller's umask (000 would make its folders world-writable) until their modes are set, and the
    directory is already in the prefix, so nobody else may get in before then."""
    try:
        os.chmod(target, 0o700)
        create_venv(target, deps, compile_bytecode=compile_bytecode)
        os.chmod(target, 0o755)
        flush.now()
        refs = intend()
        _write_receipt(target, verified, deps, record, refs)
        (target / INCOMPLETE).unlink()
        fsync_dir(target)
    except BaseException:
        remove_tree(target)
        raise
    return refs


def _result(verified: VerifiedManifest, target: Path, status: str, previous: str | None,
            overrides: tuple[str, ...], deps: DependencyPlan | None, *, shared: object = None) -> InstallResult:
    m = verified.manifest
    counts = {str(k): v for k, v in shared.items() if isinstance(v, int)} if isinstance(shared, dict) else None
    return InstallResult(
        name=m.name, version=m.version, path=target, manifest_digest=verified.digest, signers=verified.signers,
        files=m.file_count, bytes=m.file_bytes, status=status, previous=previous,
        overrides=overrides,
        venv=target / "venv" if deps is not None else None,
        base=m.base.to_dict() if m.base is not None else None, shared=counts,
    )


def _record(state: HostState | None, snapshot: StateSnapshot | None, verified: VerifiedManifest, plan: _FloorPlan,
            *, receipt: str | None, audit: tuple[AuditRef, ...]) -> None:
    """Raise the floor, durably, before ``current`` points at the new version (see :func:`install`)."""
    if state is not None and snapshot is not None:
        state.record(installed_record(verified, snapshot, overrides=plan.overrides, at=datetime.now(timezone.utc),
                                      by=_who(), kept=plan.kept, receipt=receipt,
                                      audit=tuple(r.to_dict() for r in audit)))


def _raise_floor(state: HostState | None, snapshot: StateSnapshot | None, verified: VerifiedManifest,
                 plan: _FloorPlan, target: Path, audit: tuple[AuditRef, ...]) -> None:
    """Step 5 for a version this run made: if the floor cannot be raised, the version directory goes
    again (it was never current), unless the state did get written after all."""
    receipt = _receipt_digest(target)
    try:
        _record(state, snapshot, verified, plan, receipt=receipt, audit=audit)
    except BaseException:
        if not _state_names(state, verified.manifest.name, receipt):
            remove_tree(target)
        raise


def _state_names(state: HostState | None, name: str, receipt: str | None) -> bool:
    try:
        entry = state.load().bundles.get(name) if state is not None else None
    except Exception:  # the state that just failed to write may not read either: then it does not name us
        return False
    return entry is not None and receipt is not None and entry.receipt == receipt


def _receipt_digest(target: Path) -> str | None:
    """sha256 of ``target/receipt.json``, or None when there is none that can be read."""
    try:
        data = read_optional(target / RECEIPT, cap=MAX_RECEIPT_BYTES, refuse=lambda r: Malformed(r.strerror))
    except (OSError, ValueError):
        return None
    return None if data is None else "sha256:" + hashlib.sha256(data).hexdigest()


def _make_dirs(home: Path) -> None:
    """The prefix and ``home`` as needed, 0755 whatever the umask, then checked (host/strict.py)."""
    make_dirs(home)
    check_dir(home, what="bundle home")


@contextmanager
def locked(home: Path, *, forget_on_error: bool = False) -> Iterator[None]:
    """Hold ``home/.lock``. ``forget_on_error``: this run created ``home``, so a failure removes the
    lock and the then-empty ``home`` again (a refused first install leaves no trace)."""
    try:
        fd = os.open(home / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise HostError(f"cannot open lock {home / LOCK}: {e.strerror}", subject=str(home / LOCK)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HostError(f"target busy: another gapship process holds {home / LOCK}", subject=str(home / LOCK)) from None
        _check_lock_in_place(fd, home)
        try:
            yield
        except BaseException:
            if forget_on_error:
                _forget_home(home)
            raise
    finally:
        os.close(fd)


def _check_lock_in_place(fd: int, home: Path) -> None:
    """The lock we hold must still be the file at ``home/.lock``: a process that opened it just before
    a failed first install removed it (_forget_home) would otherwise hold a lock nobody else sees."""
    held = os.fstat(fd)
    try:
        now = os.stat(home / LOCK, follow_symlinks=False)
    except OSError:
        now = None
    if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
        raise HostError(f"target busy: {home / LOCK} was replaced by another gapship process", subject=str(home / LOCK))


def _forget_home(home: Path) -> None:
    """Remove ``home`` if it holds nothing but our lock; called while the lock is still held."""
    try:
        if [p.name for p in home.iterdir()] == [LOCK]:
            (home / LOCK).unlink()
            home.rmdir()
    except OSError:
        pass  # best effort: an empty home with a lock is harmless


@contextmanager
def as_host_error(home: Path) -> Iterator[None]:
    """An OSError while staging, writing the records or switching ``current`` is the host's doing
    (disk full, quota, read-only, permissions): exit 7 naming the directory, not an internal error."""
    try:
        yield
    except OSError as e:
        raise HostError(f"cannot install into {home}: {e.strerror or e}", subject=str(home)) from None


def _remove_staging_litter(home: Path) -> None:
    """Called under the lock: no other install can own a staging directory now."""
    for entry in home.iterdir():
        if entry.name.startswith((STAGING_PREFIX, ".current-", REMOVING_PREFIX)):  # .removing-: prune.py
            remove_tree(entry)


def _remove_incomplete_versions(home: Path, active: str | None) -> None:
    """Called under the lock: a version directory with the ``.incomplete`` marker and no receipt is an
    install that died while its venv was being made (see the module docstring). Anything else that lacks
    a receipt is not gapship's to delete; :func:`_check_same_bundle` refuses to touch it."""
    for entry in home.iterdir():
        if entry.name.startswith(".") or entry.name in (CURRENT, active) or entry.is_symlink() or not entry.is_dir():
            continue
        if (entry / INCOMPLETE).is_file() and not (entry / RECEIPT).exists():
            remove_tree(entry)


def _mkdtemp(home: Path) -> str:
    try:
        return tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=home)
    except OSError as e:
        raise HostError(f"cannot create a staging directory in {home}: {e.strerror}", subject=str(home)) from None


def active_version(home: Path) -> str | None:
    link = home / CURRENT
    if not link.is_symlink():
        if link.exists():
            raise HostError(f"{link} exists and is not a symlink; refusing to touch it", subject=str(link))
        return None
    return os.readlink(link)


def _check_same_bundle(target: Path, verified: VerifiedManifest) -> dict[str, object]:
    """The receipt is written last, so a version directory without one (and not removed as incomplete
    litter by :func:`_remove_incomplete_versions`) is someone else's: refuse rather than replace it.
    Return the receipt; :func:`~.adopt.check_version_dir` then checks the rest before adopting it."""
    m = verified.manifest
    if target.is_symlink() or not target.is_dir():
        raise IntegrityError(f"{target} is a symlink or not a directory, not a version directory gapship made; "
                             "refusing to adopt it", subject=str(target))
    try:
        data = read_bounded(target / RECEIPT, cap=MAX_RECEIPT_BYTES, refuse=lambda r: Malformed(r.strerror))
        receipt = parse_json(data, source=RECEIPT, error=Malformed)
        digest = receipt["manifest_digest"] if isinstance(receipt, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        receipt, digest = None, None
    if digest != verified.digest or not isinstance(receipt, dict):
        raise PolicyError(
            f"{m.name} {m.version} is already installed at {target} from a different manifest; refusing to replace it",
            subject=str(target),
        )
    return receipt


@dataclass(frozen=True)
class _ReceiptFacts:
    """What the receipt records beyond the manifest: the --allow-* overrides used, the site decision,
    and how many files were made from installed ones (:mod:`..host.share`)."""

    overrides: tuple[str, ...]
    site: SiteDecision | None
    shared: ShareCounts = field(default_factory=ShareCounts)
    provenance: VerifiedProvenance | None = None


def _write_records(staging: Path, verified: VerifiedManifest, record: _ReceiptFacts, *, marker: bool) -> None:
    """The exact manifest and signatures, so the install can be re-verified later, and the site
    records (read-only); when a venv must still be made, the ``.incomplete`` marker. The receipt comes
    later (:func:`_write_receipt`), after the intent record whose reference it keeps."""
    (staging / "manifest.json").write_bytes(verified.manifest_bytes)
    sigdir = staging / SIGNATURES
    sigdir.mkdir()
    for name, data in verified.signature_files.items():
        (sigdir / name).write_bytes(data)
    if marker:
        (staging / INCOMPLETE).write_bytes(b"")
    _settle_modes(staging, verified.manifest)
    write_site_records(staging, verified, record.site, now=datetime.now(timezone.utc))  # read-only, so last
    make_read_only(staging)  # sbom/ (docs/sbom.md)
    if record.provenance is not None:
        install_provenance(staging, record.provenance)


def _write_receipt(target: Path, verified: VerifiedManifest, deps: DependencyPlan | None, record: _ReceiptFacts,
                   audit: Sequence[AuditRef]) -> None:
    """Atomically, and flushed: its presence is what marks the version directory complete. Mode 644,
    not left to the umask (see _settle_modes); an OSError is the host's (as_host_error)."""
    with atomic_file(target / RECEIPT, mode=0o644) as f:
        f.write(_receipt(verified, deps, record, audit))


def _receipt(verified: VerifiedManifest, deps: DependencyPlan | None, record: _ReceiptFacts,
             audit: Sequence[AuditRef]) -> bytes:
    m = verified.manifest
    receipt: dict[str, object] = {
        "receipt_version": 1,
        "bundle": {"name": m.name, "version": m.version},
        "bundle_expires": m.expires,  # the manifest's own expiry (null: it does not expire); `status` shows it
        "manifest_digest": verified.digest,
        "signers": list(verified.signers),
        "installed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "installed_by": _who(),
        "host": socket.gethostname(),
        "files": m.file_count,
        "bytes": m.file_bytes,
        "gapship_version": __version__,
        "overrides": list(record.overrides),
        "site": record.site.summary() if record.site else None,
        "audit": [ref.to_dict() for ref in audit],  # the intent record(s) of this install (docs/format.md)
        "base": m.base.to_dict() if m.base is not None else None,  # a delta's base (docs/format.md, 11.1)
        "shared": record.shared.to_dict(),  # files made from installed ones, by method (host/share.py)
    }
    if deps is not None:
        receipt["dependencies"] = {"venv": "venv", **deps.to_dict()}
    return canonical_json(receipt) + b"\n"


def _settle_modes(staging: Path, manifest: Manifest) -> None:
    """Directories 755 and the records 644, whatever the caller's umask (each payload file already has
    its manifest mode): under umask 000 the verified tree would otherwise be world-writable, under 077
    unreadable by the service that loads the model. The directories are the staging directory,
    signatures/ and every folder a written file's path in the manifest names: nothing else has made
    any by now. Named from the manifest rather than walked: os.walk of the benchmark's 20,000 files was most
    of the time between the extraction and the final flush."""
    os.chmod(staging, 0o755)
    os.chmod(staging / SIGNATURES, 0o755)
    for folder in _folders_of(manifest.file_paths()):
        try:
            os.chmod(staging / folder, 0o755)
        except FileNotFoundError:  # only files of models the site does not enable were to go there
            pass
    for record in (staging / RECEIPT, staging / INCOMPLETE, staging / "manifest.json",
                   *(staging / SIGNATURES).iterdir()):
        if record.exists():
            os.chmod(record, 0o644)


def _folders_of(paths: Iterable[str]) -> set[str]:
    """Every folder the relative ``paths`` lie in, and each folder above it."""
    parents = {path.rpartition("/")[0] for path in paths}
    folders: set[str] = set()
    for parent in parents:
        while parent and parent not in folders:
            folders.add(parent)
            parent = parent.rpartition("/")[0]
    return folders


def _who() -> str:
    """The real uid's name, never $USER/$LOGNAME, which the caller's environment controls."""
    return str(audit_who()["user"])


def _switch_current(home: Path, version: str) -> None:
    link = home / CURRENT
    if link.is_symlink() and os.readlink(link) == version:
        return
    tmp = home / f".current-{secrets.token_hex(6)}"
    os.symlink(version, tmp)
    os.replace(tmp, link)
    fsync_dir(home)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Flush:
    """One syncfs(2) of the filesystem holding ``path``, on a descriptor opened before the files it
    must flush are written. Linux reports a write-back error to syncfs only on descriptors opened
    before the error: the extraction starts write-back early (pipeline.Flusher), so an error can
    happen before the end, and a descriptor opened then would not see it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> _Flush:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)

    def now(self) -> None:
        _syncfs(self.fd, self.path)


def _syncfs(fd: int, path: Path) -> None:
    """Flush the staged files to disk before they become visible: one syncfs(2) of the filesystem
    (on ``fd``, a directory in it) instead of an fsync per file."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise HostError(f"cannot flush {path} to disk: {os.strerror(err)}", subject=str(path))
    except AttributeError:
        os.sync()
