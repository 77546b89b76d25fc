"""Installing verified wheels into a venv in-process, with pypa/installer (docs/dependencies.md).

pip took about 95% of a real install with dependencies (issue 16): it starts a second interpreter,
resolves again what the lock already pins, and imports much of itself. The lock and the wheels are
already verified here (the manifest's hashes, then :mod:`.deps`), so what is left is unpacking
archives, which pypa/installer (PyPA's small pure-Python wheel installer; its top-level module is
``installer``, which is why gapship's is ``gapship.installer``) does without running any code from a
wheel. On top of it this module keeps pip's guarantees and adds some:

- only wheels whose sha256 the lock pins are installed, one per pin, the one whose tags this
  interpreter prefers (:func:`choose_wheels`), hashed here from the version directory;
- every file of a wheel is listed in its ``RECORD`` with a hash and size, and each file's bytes are
  checked against that entry as they are written (:class:`_Checked`); any mismatch refuses the
  install, which then removes the whole version (install.py);
- files are created with ``O_EXCL | O_NOFOLLOW`` and modes 0644 or 0755 whatever the umask, so two
  wheels that carry the same file, or a path that leaves its scheme, are refused, not overwritten;
- console and GUI scripts are made from the entry points as pip makes them (a ``#!`` line to the
  venv's python, the launcher pypa/installer generates), ``#!python`` scripts get the venv's python,
  ``.pth`` files are copied like any other file (nothing runs them until the venv's python starts);
- bytecode is compiled optionally, after all wheels are in, by the planned interpreter in parallel
  (``compileall -j 0``) with ``-I -S``: no site-packages and so no ``.pth`` file runs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import stat
import subprocess
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from installer import install as install_wheel
from installer.destinations import SchemeDictionaryDestination
from installer.records import Hash, RecordEntry, parse_record_file
from installer.sources import WheelContentElement, WheelFile
from installer.utils import Scheme

from ..errors import HostError, UnsafeContentError

if TYPE_CHECKING:
    from installer.scripts import ScriptSection

INSTALLER_NAME = b"gapship\n"
_BLOCK = 1024 * 1024
_FILE_MODE, _EXEC_MODE, _DIR_MODE = 0o644, 0o755, 0o755


@dataclass(frozen=True)
class Choice:
    """The wheel installed for one pin."""

    name: str
    version: str
    path: Path


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file (a wheel in the version directory)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def choose_wheels(wheels_dir: Path, wheels: Sequence[str], pins: Sequence[tuple[str, str, Sequence[str]]],
                  tags: Sequence[str]) -> list[Choice]:
    """For each pin (canonical name, version, sha256 digests), the bundled wheel with a pinned hash
    whose best tag comes first in ``tags`` (the interpreter's, most preferred first), as pip picks.
    Wheels no pin names by hash (gapship's own, ``--include-gapship``) are carried, not installed."""
    from packaging.utils import parse_wheel_filename
    from packaging.version import Version

    rank = {t: i for i, t in enumerate(tags)}
    by_pin: dict[tuple[str, Version], list[tuple[int, str]]] = {}
    for name in wheels:
        dist, parsed, _, wheel_tags = parse_wheel_filename(name)
        best = min((rank[str(t)] for t in wheel_tags if str(t) in rank), default=None)
        if best is not None:
            by_pin.setdefault((str(dist), parsed), []).append((best, name))
    out = []
    for pin, version, hashes in pins:
        locked = {h.removeprefix("sha256:") for h in hashes}
        fitting = sorted(c for c in by_pin.get((pin, Version(version)), []))
        chosen = next((n for _, n in fitting if sha256_file(wheels_dir / n) in locked), None)
        if chosen is None:
            raise UnsafeContentError(
                f"no bundled wheel for {pin}=={version} fits this interpreter and has a hash the lock pins",
                subject=f"{pin}=={version}")
        out.append(Choice(pin, version, wheels_dir / chosen))
    return out


def install_wheels(venv: Path, choices: Sequence[Choice], *, python_version: str) -> None:
    """Unpack each chosen wheel into ``venv`` (made by ``python -m venv``, at its final path).

    The files of a wheel are decompressed, checked and written by a few threads (zlib, hashlib and
    the writes release the GIL); a wheel's ``RECORD`` is written only once all its files are."""
    scheme = scheme_paths(venv, python_version)
    with ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="gapship-wheel") as pool:
        made: set[str] = set()
        for choice in choices:
            _install_one(choice.path, scheme, pool, made)


def _workers() -> int:
    return max(2, min(8, (os.cpu_count() or 1) + 1))


def scheme_paths(venv: Path, python_version: str) -> dict[str, str]:
    """Where a venv's python puts each scheme on POSIX (``sysconfig``'s ``venv`` / ``posix_prefix``),
    the layout ``adopt.check_venv`` checks."""
    site = str(venv / "lib" / f"python{python_version}" / "site-packages")
    return {"purelib": site, "platlib": site, "scripts": str(venv / "bin"), "data": str(venv),
            "headers": str(venv / "include" / "site" / f"python{python_version}")}


def _install_one(path: Path, scheme: dict[str, str], pool: ThreadPoolExecutor, made: set[str]) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise UnsafeContentError(f"wheel {path.name} is not a zip archive: {_one_line(e)}", subject=path.name) from None
    with archive:
        try:
            source = _CheckedSource(archive)
            source.validate_record(validate_contents=False)  # every file listed, each with a hash and size
        except Exception as e:  # the validation error, a bad name or .dist-info: all of it bundle content
            raise UnsafeContentError(f"wheel {path.name} is not a well-formed wheel: {_one_line(e)}",
                                     subject=path.name) from None
        headers = dict(scheme, headers=posixpath.join(scheme["headers"], source.distribution))
        destination = _Destination(scheme_dict=headers, interpreter=str(Path(scheme["scripts"]) / "python"),
                                   script_kind="posix", wheel=path.name, pool=pool, made=made)
        try:
            install_wheel(source, destination, {"INSTALLER": INSTALLER_NAME, "REQUESTED": b""})
        except (UnsafeContentError, HostError):
            raise
        except OSError as e:
            raise HostError(f"cannot install wheel {path.name}: {e.strerror or e}", subject=path.name) from None
        except Exception as e:  # pypa/installer's InvalidWheelSource, ValueError (a path leaving its scheme)
            raise UnsafeContentError(f"cannot install wheel {path.name}: {_one_line(e)}", subject=path.name) from None
        finally:
            destination.drain(quiet=True)  # no thread may write once this returns or raises (the tree may go)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


class _CheckedSource(WheelFile):
    """The wheel, each of its files handed out as a :class:`_Member`, checked against its ``RECORD``
    entry while it is read (``validate_record`` has made sure that every file has one)."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        super().__init__(archive)
        self._wheel_name = Path(archive.filename or "").name

    def get_contents(self) -> Iterator[WheelContentElement]:
        records = {r[0]: r for r in parse_record_file(self.read_dist_info("RECORD").splitlines())}
        record_path = f"{self.dist_info_dir}/RECORD"
        for item in self._zipfile.infolist():
            if item.filename.endswith("/"):
                continue
            elements = records.get(item.filename, (item.filename, "", ""))
            mode = item.external_attr >> 16
            is_executable = bool(mode and stat.S_ISREG(mode) and mode & 0o111)  # as pip and pypa/installer
            entry = RecordEntry.from_elements(*elements)
            if entry.path == record_path or entry.hash_ is None or entry.size is None:
                with self._zipfile.open(item) as raw:  # RECORD itself (not installed), signatures (RECORD.jws)
                    yield elements, cast(BinaryIO, raw), is_executable
                continue
            member = _Member(self._zipfile, item, entry, self._wheel_name)
            try:
                yield elements, cast(BinaryIO, member), is_executable
            finally:
                member.close()


class _Member:
    """One file of a wheel, not yet opened: the destination either writes it on a thread (opening it
    there) or reads it here (a script, whose ``#!`` line pypa/installer rewrites)."""

    def __init__(self, archive: zipfile.ZipFile, item: zipfile.ZipInfo, entry: RecordEntry, wheel: str) -> None:
        self.archive, self.item, self.entry, self.wheel = archive, item, entry, wheel
        self._open: _Checked | None = None

    def checked(self) -> _Checked:
        return _Checked(cast(BinaryIO, self.archive.open(self.item)), self.entry, self.wheel)

    def _stream(self) -> _Checked:
        if self._open is None:
            self._open = self.checked()
        return self._open

    def read(self, size: int = -1) -> bytes:
        return self._stream().read(size)

    def readline(self, size: int = -1) -> bytes:
        return self._stream().readline(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream().seek(offset, whence)

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


class _Checked:
    """A read-only stream that refuses, at its end, bytes that are not the ones ``RECORD`` names.
    ``seek(0)`` starts the check again (pypa/installer rereads a script to rewrite its ``#!`` line)."""

    def __init__(self, stream: BinaryIO, entry: RecordEntry, wheel: str) -> None:
        assert entry.hash_ is not None and entry.size is not None
        self._stream, self._entry, self._wheel = stream, entry, wheel
        self._want: Hash = entry.hash_
        self._restart()

    def _restart(self) -> None:
        self._hash = hashlib.new(self._want.name)
        self._size = 0
        self._done = False

    def close(self) -> None:
        self._stream.close()

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise UnsafeContentError(f"wheel {self._wheel}: unexpected seek", subject=self._wheel)
        self._restart()
        return self._stream.seek(0)

    def read(self, size: int = -1) -> bytes:
        return self._account(self._stream.read(size), eof_if_empty=size != 0)

    def readline(self, size: int = -1) -> bytes:
        return self._account(self._stream.readline(size), eof_if_empty=size != 0)

    def _account(self, data: bytes, *, eof_if_empty: bool) -> bytes:
        self._hash.update(data)
        self._size += len(data)
        if self._size > (self._entry.size or 0):
            self._refuse("is longer than")
        if not data and eof_if_empty and not self._done:
            self._done = True
            if self._size != self._entry.size or _b64(self._hash.digest()) != self._want.value:
                self._refuse("does not match")
        return data

    def _refuse(self, what: str) -> None:
        raise UnsafeContentError(f"{self._entry.path} in wheel {self._wheel} {what} its RECORD entry",
                                 subject=self._wheel)


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@dataclass
class _Destination(SchemeDictionaryDestination):
    """pypa/installer's destination, writing with fixed modes and ``O_EXCL | O_NOFOLLOW``, the files
    of a wheel on ``pool``'s threads."""

    wheel: str = ""
    pool: ThreadPoolExecutor | None = None
    made: set[str] = field(default_factory=set)  # directories known to exist (shared by the wheels)
    jobs: list[Future[None]] = field(default_factory=list)

    def write_file(self, scheme: Scheme, path: str | os.PathLike[str], stream: BinaryIO,
                   is_executable: bool) -> RecordEntry:
        member = cast(object, stream)
        if scheme == "scripts" or self.pool is None or not isinstance(member, _Member):
            return super().write_file(scheme, path, stream, is_executable)
        target = self._target(scheme, os.fspath(path))  # refuses an escaping path now, not on a thread
        self.jobs.append(self.pool.submit(self._write_member, target, member, is_executable))
        # the bytes written are the bytes RECORD names (else the job fails, and so the install)
        return RecordEntry(os.fspath(path), member.entry.hash_, member.entry.size)

    def _write_member(self, target: str, member: _Member, is_executable: bool) -> None:
        checked = member.checked()
        try:
            self._write(target, cast(BinaryIO, checked), is_executable, hash_name=None, shown=member.entry.path)
        finally:
            checked.close()

    def write_to_fs(self, scheme: Scheme, path: str, stream: BinaryIO, is_executable: bool) -> RecordEntry:
        digest, size = self._write(self._target(scheme, path), stream, is_executable, hash_name=self.hash_algorithm,
                                   shown=path)
        return RecordEntry(path, Hash(self.hash_algorithm, digest), size)

    def _target(self, scheme: Scheme, path: str) -> str:
        root = os.path.abspath(self.scheme_dict[scheme])
        full = os.path.abspath(os.path.join(root, path))
        if os.path.commonpath([root, full]) != root or full == root:
            raise ValueError(f"Attempting to write {path} outside of the target directory")
        return full

    def _write(self, target: str, stream: BinaryIO, is_executable: bool, *, hash_name: str | None,
               shown: str) -> tuple[str, int]:
        self._make_parents(os.path.dirname(target))
        mode = _EXEC_MODE if is_executable else _FILE_MODE
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except FileExistsError:
            raise UnsafeContentError(f"wheel {self.wheel} would overwrite {shown}, which another wheel or the venv "
                                     "already has",
                                     subject=self.wheel) from None
        h, size = (hashlib.new(hash_name) if hash_name else None), 0
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # not the caller's umask: 000 would make it world-writable
            while block := stream.read(_BLOCK):
                if h is not None:
                    h.update(block)
                size += len(block)
                out.write(block)
        return (_b64(h.digest()) if h else ""), size

    def _make_parents(self, folder: str) -> None:
        """Create ``folder`` and its missing parents, 0755 whatever the umask (several threads may)."""
        missing = []
        while folder not in self.made and not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for each in reversed(missing):
            try:
                os.mkdir(each, _DIR_MODE)
                os.chmod(each, _DIR_MODE)
            except FileExistsError:
                if not os.path.isdir(each) or os.path.islink(each):
                    raise
        self.made.update(missing)
        self.made.add(folder)

    def write_script(self, name: str, module: str, attr: str, section: ScriptSection) -> RecordEntry:
        entry = super().write_script(name, module, attr, section)
        os.chmod(self._target(Scheme("scripts"), entry.path), _EXEC_MODE)  # the base class ORs in the umask
        return entry

    def finalize_installation(self, scheme: Scheme, record_file_path: str,
                              records: Iterable[tuple[Scheme, RecordEntry]]) -> None:
        self.drain()  # every file written and checked before the RECORD that lists them
        super().finalize_installation(scheme, record_file_path, records)

    def drain(self, *, quiet: bool = False) -> None:
        """Wait for every file job; raise the first failure unless ``quiet`` (already failing)."""
        jobs, self.jobs = self.jobs, []
        first: BaseException | None = None
        for job in jobs:
            error = job.exception()
            first = first or error
        if first is not None and not quiet:
            raise first


def compile_bytecode(python: str, site_packages: Path, env: dict[str, str]) -> None:
    """Compile the venv's ``.py`` files with the planned interpreter, on every core. ``-S``: the venv's
    ``.pth`` files are not processed, so nothing from a wheel runs. A file that does not compile is
    left without bytecode, as pip leaves it; a full disk or a permission problem refuses (exit 7)."""
    argv = [python, "-I", "-S", "-m", "compileall", "-q", "-j", "0", str(site_packages)]
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace", check=False, umask=0o022)
    except OSError as e:
        raise HostError(f"cannot compile bytecode with {python}: {e.strerror}", subject=python) from None
    if done.returncode != 0 and any(s in done.stdout for s in ("No space left on device", "Read-only file system",
                                                               "Permission denied", "Disk quota exceeded")):
        raise HostError(f"cannot compile bytecode in {site_packages}: {done.stdout.strip().splitlines()[-1][:300]}",
                        subject=str(site_packages), hint="the previous version stays active")
