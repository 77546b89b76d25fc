"""Installing a verified bundle under a prefix (docs/format.md, "Install layout").

``PREFIX/<name>/<version>/`` holds the files, ``receipt.json``, and copies of ``manifest.json`` and
``signatures/``; ``PREFIX/<name>/current`` is a symlink to the active version. Files are written into a
private ``.staging-*`` directory that becomes the version directory by one rename, after every chunk
and file hash matched and the data reached the disk; ``current`` is then switched by another rename.
A lock (``PREFIX/<name>/.lock``) keeps a second install of the same bundle name out, and the next
install removes whatever staging litter an interrupted one left behind.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import getpass
import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from ._extract import extract_payload
from .bundle import SIGNATURES
from .errors import HostError, PolicyError
from .hashing import Progress, no_progress
from .manifest import canonical_json
from .trust import VerifiedManifest
from .verify import check_chunk_names

CURRENT = "current"
RECEIPT = "receipt.json"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"


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

    def to_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "bundle": {"name": self.name, "version": self.version},
            "path": str(self.path),
            "manifest_digest": self.manifest_digest,
            "signers": list(self.signers),
            "files": self.files,
            "bytes": self.bytes,
            "previous": self.previous,
        }


def install(bundle: Path, verified: VerifiedManifest, *, prefix: Path, progress: Progress = no_progress) -> InstallResult:
    """Install ``verified`` from the bundle directory ``bundle`` into ``prefix``; return or raise.
    On any failure the previous ``current`` and every installed version are left as they were."""
    m = verified.manifest
    check_chunk_names(bundle, verified)  # the signed chunk list, nothing missing and nothing extra
    home = prefix / m.name
    fresh = not (home.exists() or home.is_symlink())
    _make_dirs(home)
    with _locked(home, forget_on_error=fresh), _as_host_error(home):
        _remove_staging_litter(home)
        previous = _active_version(home)
        target = home / m.version
        if target.exists() or target.is_symlink():
            _check_same_bundle(target, verified)
            _switch_current(home, m.version)
            return _result(verified, target, "already-installed", previous)
        staging = Path(_mkdtemp(home))
        try:
            extract_payload(bundle, m, staging, progress=progress)
            _write_records(staging, verified)
            _settle_modes(staging)
            _sync(staging)
            os.rename(staging, target)
            _fsync_dir(home)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _switch_current(home, m.version)
    return _result(verified, target, "installed", previous)


def _result(verified: VerifiedManifest, target: Path, status: str, previous: str | None) -> InstallResult:
    m = verified.manifest
    return InstallResult(
        name=m.name, version=m.version, path=target, manifest_digest=verified.digest, signers=verified.signers,
        files=m.file_count, bytes=sum(f.size for f in m.files()), status=status, previous=previous,
    )


def _make_dirs(home: Path) -> None:
    try:
        home.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise HostError(f"cannot create {home}: permission denied", subject=str(home)) from None
    except OSError as e:
        raise HostError(f"cannot create {home}: {e.strerror}", subject=str(home)) from None


@contextmanager
def _locked(home: Path, *, forget_on_error: bool = False) -> Iterator[None]:
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
def _as_host_error(home: Path) -> Iterator[None]:
    """An OSError while staging, writing the records or switching ``current`` is the host's doing
    (disk full, quota, read-only, permissions): exit 7 naming the directory, not an internal error."""
    try:
        yield
    except OSError as e:
        raise HostError(f"cannot install into {home}: {e.strerror or e}", subject=str(home)) from None


def _remove_staging_litter(home: Path) -> None:
    """Called under the lock: no other install can own a staging directory now."""
    for entry in home.iterdir():
        if entry.name.startswith((STAGING_PREFIX, ".current-")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _mkdtemp(home: Path) -> str:
    try:
        return tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=home)
    except OSError as e:
        raise HostError(f"cannot create a staging directory in {home}: {e.strerror}", subject=str(home)) from None


def _active_version(home: Path) -> str | None:
    link = home / CURRENT
    if not link.is_symlink():
        if link.exists():
            raise HostError(f"{link} exists and is not a symlink; refusing to touch it", subject=str(link))
        return None
    return os.readlink(link)


def _check_same_bundle(target: Path, verified: VerifiedManifest) -> None:
    m = verified.manifest
    try:
        receipt = json.loads((target / RECEIPT).read_text())
        digest = receipt["manifest_digest"]
    except (OSError, ValueError, KeyError, TypeError):
        digest = None
    if digest != verified.digest:
        raise PolicyError(
            f"{m.name} {m.version} is already installed at {target} from a different manifest; refusing to replace it",
            subject=str(target),
        )


def _write_records(staging: Path, verified: VerifiedManifest) -> None:
    """The receipt and the exact manifest and signatures, so the install can be re-verified later."""
    m = verified.manifest
    (staging / "manifest.json").write_bytes(verified.manifest_bytes)
    sigdir = staging / SIGNATURES
    sigdir.mkdir()
    for name, data in verified.signature_files.items():
        (sigdir / name).write_bytes(data)
    receipt = {
        "receipt_version": 1,
        "bundle": {"name": m.name, "version": m.version},
        "manifest_digest": verified.digest,
        "signers": list(verified.signers),
        "installed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "installed_by": _who(),
        "host": socket.gethostname(),
        "files": m.file_count,
        "bytes": sum(f.size for f in m.files()),
        "gapship_version": __version__,
    }
    (staging / RECEIPT).write_bytes(canonical_json(receipt) + b"\n")


def _settle_modes(staging: Path) -> None:
    """Directories 755 and the records 644, whatever the caller's umask (each payload file already has
    its manifest mode): under umask 000 the verified tree would otherwise be world-writable, under 077
    unreadable by the service that loads the model."""
    for dirpath, _dirnames, _filenames in os.walk(staging):
        os.chmod(dirpath, 0o755)
    for record in (staging / RECEIPT, staging / "manifest.json", *(staging / SIGNATURES).iterdir()):
        os.chmod(record, 0o644)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _switch_current(home: Path, version: str) -> None:
    link = home / CURRENT
    if link.is_symlink() and os.readlink(link) == version:
        return
    tmp = home / f".current-{secrets.token_hex(6)}"
    os.symlink(version, tmp)
    os.replace(tmp, link)
    _fsync_dir(home)


def _sync(path: Path) -> None:
    """Flush the staged files to disk before they become visible: one syncfs(2) of the filesystem
    instead of an fsync per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise HostError(f"cannot flush {path} to disk: {os.strerror(err)}", subject=str(path))
    except AttributeError:
        os.sync()
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
