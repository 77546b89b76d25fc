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
  checked against that entry as they are written (:func:`_write_job`, :class:`_Checked` for
  scripts); any mismatch refuses the install, which then removes the whole version (install.py);
- the files of all the wheels are written at once, by one thread per core, the largest first, while
  pypa/installer walks the wheels on the calling thread (:class:`_Unpack`); each wheel's ``RECORD``
  is written after every file of the batch (issue 16: unpacking one wheel after the other left a
  core idle);
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
import heapq
import os
import posixpath
import stat
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from installer import install as install_wheel
from installer.destinations import SchemeDictionaryDestination
from installer.records import Hash, RecordEntry, parse_record_file
from installer.sources import WheelContentElement, WheelFile
from installer.utils import Scheme

from ..errors import HostError, UnsafeContentError
from ..host.fs import creation_mask, write_all
from .pipeline import usable_cores

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
                  tags: Sequence[str], *, digests: Mapping[str, str] | None = None) -> list[Choice]:
    """For each pin (canonical name, version, sha256 digests), the bundled wheel with a pinned hash
    whose best tag comes first in ``tags`` (the interpreter's, most preferred first), as pip picks.
    Wheels no pin names by hash (gapship's own, ``--include-gapship``) are carried, not installed.

    ``digests`` (wheel file name -> hex sha256) are those of the signed manifest, against which every
    file of the version directory was checked as it was written (extract.py; a file shared from an
    installed version, delta.py, is hashed as it is linked): hashing the wheel again here would only
    read the same local file once more. A wheel without one is hashed here."""
    from packaging.utils import parse_wheel_filename
    from packaging.version import Version

    known = digests or {}
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
        chosen = next((n for _, n in fitting if (known.get(n) or sha256_file(wheels_dir / n)) in locked), None)
        if chosen is None:
            raise UnsafeContentError(
                f"no bundled wheel for {pin}=={version} fits this interpreter and has a hash the lock pins",
                subject=f"{pin}=={version}")
        out.append(Choice(pin, version, wheels_dir / chosen))
    return out


def install_wheels(venv: Path, choices: Sequence[Choice], *, python_version: str,
                   workers: int | None = None) -> None:
    """Unpack each chosen wheel into ``venv`` (made at its final path, :func:`~.deps.create_venv`).

    All wheels are unpacked at once rather than one after the other (issue 16): pypa/installer walks
    each wheel on this thread, the biggest wheel first, which checks every path, makes the
    directories, writes the scripts and metadata and queues each other file; meanwhile ``workers``
    threads (default: one per core) take the largest queued file, decompress it, check it against
    its ``RECORD`` entry and write it (inflate, hashlib, pread and write release the GIL). Each
    wheel's ``RECORD`` is written last, once every queued file is. The wheels go in batches so that a
    bundle of many wheels cannot hold more than :data:`_WHEELS_OPEN` archives open."""
    scheme = scheme_paths(venv, python_version)
    made: set[str] = set()
    umask = creation_mask(venv)
    with _short_switches():
        for start in range(0, len(choices), _WHEELS_OPEN):
            with _Unpack(workers or _workers(), umask=umask) as unpack:
                batch = sorted(choices[start:start + _WHEELS_OPEN], key=lambda c: c.path.stat().st_size, reverse=True)
                for choice in batch:  # the big wheels first: their big files are queued first
                    if unpack.failed:
                        break  # a writer has failed: run() raises it; walking the rest is wasted work
                    _install_one(choice.path, scheme, unpack, made)
                unpack.run()


@contextmanager
def _short_switches() -> Iterator[None]:
    """A shorter GIL switch interval while the wheels are unpacked. The writer threads give the GIL
    up around every decompression, hash update and write, and wait for it again; while this thread
    walks a wheel in Python, each such wait lasted the whole default interval (5 ms), so that two
    writers on two cores ran slower than one (benchmarks/deps.py). The interval is the process's:
    it is set back afterwards."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, _SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


_SWITCH_INTERVAL = 0.0005



_WHEELS_OPEN = 256


def _workers() -> int:
    """One thread per core: the queued work is decompression, hashing and writes, which run without
    the GIL; more threads than cores only add switches (measured: benchmarks/deps.py)."""
    return max(2, min(8, usable_cores()))


def scheme_paths(venv: Path, python_version: str) -> dict[str, str]:
    """Where a venv's python puts each scheme on POSIX (``sysconfig``'s ``venv`` / ``posix_prefix``),
    the layout ``adopt.check_venv`` checks."""
    site = str(venv / "lib" / f"python{python_version}" / "site-packages")
    return {"purelib": site, "platlib": site, "scripts": str(venv / "bin"), "data": str(venv),
            "headers": str(venv / "include" / "site" / f"python{python_version}")}


def _install_one(path: Path, scheme: dict[str, str], unpack: _Unpack, made: set[str]) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise UnsafeContentError(f"wheel {path.name} is not a zip archive: {_one_line(e)}", subject=path.name) from None
    unpack.archives.append(archive)  # open until its queued files are written (_Unpack.__exit__ closes it)
    try:
        source = _CheckedSource(archive)
        source.validate_record(validate_contents=False)  # every file listed, each with a hash and size
    except Exception as e:  # the validation error, a bad name or .dist-info: all of it bundle content
        raise UnsafeContentError(f"wheel {path.name} is not a well-formed wheel: {_one_line(e)}",
                                 subject=path.name) from None
    headers = dict(scheme, headers=posixpath.join(scheme["headers"], source.distribution))
    destination = _Destination(scheme_dict=headers, interpreter=str(Path(scheme["scripts"]) / "python"),
                               script_kind="posix", wheel=path.name, unpack=unpack, made=made, umask=unpack.umask)
    with _as_install_error(path.name):
        install_wheel(source, destination, {"INSTALLER": INSTALLER_NAME, "REQUESTED": b""})


@contextmanager
def _as_install_error(wheel: str) -> Iterator[None]:
    try:
        yield
    except (UnsafeContentError, HostError):
        raise
    except OSError as e:
        raise HostError(f"cannot install wheel {wheel}: {e.strerror or e}", subject=wheel) from None
    except Exception as e:  # pypa/installer's InvalidWheelSource, ValueError (a path leaving its scheme)
        raise UnsafeContentError(f"cannot install wheel {wheel}: {_one_line(e)}", subject=wheel) from None


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
    """pypa/installer's destination, writing with fixed modes and ``O_EXCL | O_NOFOLLOW``; the files
    of a wheel other than its scripts are queued on ``unpack`` and its ``RECORD`` written after them."""

    wheel: str = ""
    unpack: _Unpack | None = None
    made: set[str] = field(default_factory=set)  # directories known to exist (shared by the wheels)
    umask: int = 0o777  # host.fs.creation_mask of the venv; unknown: every mode is set explicitly

    def write_file(self, scheme: Scheme, path: str | os.PathLike[str], stream: BinaryIO,
                   is_executable: bool) -> RecordEntry:
        member = cast(object, stream)
        if scheme == "scripts" or self.unpack is None or not isinstance(member, _Member):
            return super().write_file(scheme, path, stream, is_executable)
        target = self._target(scheme, os.fspath(path))  # refuses an escaping path now, before any file is written
        self._make_parents(os.path.dirname(target))  # here, on one thread: the workers only create files
        self.unpack.queue(_Job(target=target, archive=member.archive, item=member.item, entry=member.entry,
                               wheel=self.wheel, mode=_EXEC_MODE if is_executable else _FILE_MODE))
        # the bytes written are the bytes RECORD names (else the job fails, and so the install)
        return RecordEntry(os.fspath(path), member.entry.hash_, member.entry.size)

    def write_to_fs(self, scheme: Scheme, path: str, stream: BinaryIO, is_executable: bool) -> RecordEntry:
        target = self._target(scheme, path)
        if self.unpack is not None:
            self.unpack.claim(target, self.wheel, shown=path)
        self._make_parents(os.path.dirname(target))
        fd = _create(target, _EXEC_MODE if is_executable else _FILE_MODE, umask=self.umask, wheel=self.wheel, shown=path)
        h, size = hashlib.new(self.hash_algorithm), 0
        try:
            while block := stream.read(_BLOCK):
                h.update(block)
                size += len(block)
                write_all(fd, block)
        finally:
            os.close(fd)
        return RecordEntry(path, Hash(self.hash_algorithm, _b64(h.digest())), size)

    def _target(self, scheme: Scheme, path: str) -> str:
        root = os.path.abspath(self.scheme_dict[scheme])
        full = os.path.abspath(os.path.join(root, path))
        if not full.startswith(root + os.sep):  # both normalised: the same test as os.path.commonpath, cheaper
            raise ValueError(f"Attempting to write {path} outside of the target directory")
        return full

    def _make_parents(self, folder: str) -> None:
        """Create ``folder`` and its missing parents, 0755 whatever the umask."""
        missing = []
        while folder not in self.made and not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for each in reversed(missing):
            try:
                os.mkdir(each, _DIR_MODE)
                if self.umask & _DIR_MODE:
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
        listed = list(records)
        finalize = super().finalize_installation
        if self.unpack is None:
            finalize(scheme, record_file_path, listed)
        else:  # every file written and checked before the RECORD that lists them
            self.unpack.records.append(lambda: finalize(scheme, record_file_path, listed))


@dataclass(frozen=True)
class _Job:
    """One queued file of a wheel: where it goes and the RECORD entry its bytes must match."""

    target: str
    archive: zipfile.ZipFile
    item: zipfile.ZipInfo
    entry: RecordEntry
    wheel: str
    mode: int


class _Unpack:
    """The queued files of a batch of wheels, written by ``workers`` threads while this thread walks
    the wheels and queues them, the largest queued file first (so that no thread is left with a big
    one at the end); then, in :meth:`run`, the wheels' ``RECORD`` files. Leaving the ``with`` block,
    no thread writes any more and the archives are closed, whatever happened."""

    def __init__(self, workers: int, *, umask: int) -> None:
        self.umask = umask
        self.archives: list[zipfile.ZipFile] = []
        self.records: list[Callable[[], None]] = []
        self._heap: list[tuple[int, int, _Job]] = []
        self._targets: set[str] = set()
        self._ready = threading.Condition()
        self._closed = False
        self._failed: BaseException | None = None
        self._threads = [threading.Thread(target=self._work, name=f"gapship-wheel-{i}", daemon=True)
                         for i in range(workers)]

    def __enter__(self) -> _Unpack:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self._stop(failed=True)
        for archive in self.archives:
            archive.close()

    @property
    def failed(self) -> bool:
        """Whether a writer thread has failed already (its error is raised by :meth:`run`)."""
        return self._failed is not None

    def claim(self, target: str, wheel: str, *, shown: str) -> None:
        """Two wheels that carry the same file are refused before either is written."""
        if target in self._targets:
            raise _overwrites(wheel, shown)
        self._targets.add(target)

    def queue(self, job: _Job) -> None:
        self.claim(job.target, job.wheel, shown=job.entry.path)
        with self._ready:
            heapq.heappush(self._heap, (-job.item.compress_size, len(self._targets), job))
            self._ready.notify()

    def run(self) -> None:
        """Wait until every queued file is written; raise the first failure once all threads have
        stopped; then write the RECORDs."""
        self._stop(failed=False)
        for record in self.records:
            record()
        self.records = []

    def _stop(self, *, failed: bool) -> None:
        with self._ready:
            self._closed = True
            if failed:
                self._heap.clear()
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
        if self._failed is not None and not failed:
            raise self._failed

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._heap and not self._closed:
                    self._ready.wait()
                if not self._heap or self._failed is not None:
                    return
                job = heapq.heappop(self._heap)[2]
            try:
                with _as_install_error(job.wheel):
                    _write_job(job, self.umask)
            except BaseException as e:
                with self._ready:
                    self._failed = self._failed or e  # the other threads stop at their next file
                    self._heap.clear()
                return


def _overwrites(wheel: str, shown: str) -> UnsafeContentError:
    return UnsafeContentError(f"wheel {wheel} would overwrite {shown}, which another wheel or the venv already has",
                              subject=wheel)


def _write_job(job: _Job, umask: int) -> None:
    entry = job.entry
    assert entry.hash_ is not None and entry.size is not None
    fd = _create(job.target, job.mode, umask=umask, wheel=job.wheel, shown=entry.path)
    try:
        h, size = hashlib.new(entry.hash_.name), 0
        for block in _member_blocks(job.archive, job.item, job.wheel):
            size += len(block)
            if size > entry.size:
                raise UnsafeContentError(f"{entry.path} in wheel {job.wheel} is longer than its RECORD entry",
                                         subject=job.wheel)
            h.update(block)
            write_all(fd, block)
    finally:
        os.close(fd)
    if size != entry.size or _b64(h.digest()) != entry.hash_.value:
        raise UnsafeContentError(f"{entry.path} in wheel {job.wheel} does not match its RECORD entry",
                                 subject=job.wheel)


def _create(target: str, mode: int, *, umask: int, wheel: str, shown: str) -> int:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise _overwrites(wheel, shown) from None
    if umask & mode:  # not the caller's umask (077 would make it unreadable by the serving user), or an ACL
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
    return fd


# -- reading a member ----------------------------------------------------------------------------------
# zipfile reads a member through a file object that it shares, under a lock, between all readers: a
# seek and a read per block, one thread at a time. A stored or deflated member (every wheel known) is
# read here instead with pread(2) from the offset its local header gives, which needs no lock; zlib and
# pread release the GIL. zipfile's CRC-32 check is left out: every member read here has a RECORD entry,
# whose SHA-256 (or stronger) is checked over the same bytes (:func:`_write_job`); anything else is read
# by zipfile itself.
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_LOCAL_MAGIC = b"PK\x03\x04"  # signature ... file name length, extra field length (APPNOTE 4.3.7)


def _inflater() -> tuple[Any, tuple[type[Exception], ...]]:
    """ISA-L's inflate (the ``fast`` extra, python-isal: Intel's BSD-licensed library, about twice as fast
    as zlib here, benchmarks/deps.py) when it is installed, else zlib. Either only inflates members of a
    wheel whose sha256 the signed lock pins, and every byte it returns is checked against ``RECORD``."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib, (zlib.error,)
    errors: tuple[type[Exception], ...] = (zlib.error, cast(type[Exception], isal_zlib.error))
    return isal_zlib, errors


_INFLATE, _INFLATE_ERRORS = _inflater()


def _member_blocks(archive: zipfile.ZipFile, item: zipfile.ZipInfo, wheel: str) -> Iterator[bytes]:
    if item.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or item.flag_bits & 0x1 \
            or archive.fp is None:
        with archive.open(item) as f:
            while block := f.read(_BLOCK):
                yield block
        return
    fd = archive.fp.fileno()
    start = _data_offset(fd, item, wheel)
    end = start + item.compress_size
    inflate = _INFLATE.decompressobj(-zlib.MAX_WBITS) if item.compress_type == zipfile.ZIP_DEFLATED else None
    try:
        while start < end:
            raw = os.pread(fd, min(_BLOCK, end - start), start)
            if not raw:
                raise _malformed(wheel, item, "is truncated")
            start += len(raw)
            if inflate is None:
                yield raw
                continue
            out = inflate.decompress(raw, _BLOCK)  # at most a block at a time, whatever the ratio
            while True:
                if out:
                    yield out
                if not inflate.unconsumed_tail:
                    break
                out = inflate.decompress(inflate.unconsumed_tail, _BLOCK)
        if inflate is not None:
            if tail := inflate.flush():
                yield tail
            if not inflate.eof:
                raise _malformed(wheel, item, "ends before its compressed data does")
    except _INFLATE_ERRORS as e:
        raise _malformed(wheel, item, f"does not decompress ({e})") from None


def _data_offset(fd: int, item: zipfile.ZipInfo, wheel: str) -> int:
    try:
        want = item.orig_filename.encode("utf-8" if item.flag_bits & 0x800 else "cp437")
    except UnicodeEncodeError:
        want = b""
    header = os.pread(fd, _LOCAL_HEADER.size + len(want), item.header_offset)  # the header and its name at once
    if len(header) < _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
        raise _malformed(wheel, item, "has no local file header")
    name_length: int
    extra_length: int
    _, name_length, extra_length = _LOCAL_HEADER.unpack_from(header)
    if not want or header[_LOCAL_HEADER.size:] != want or name_length != len(want):
        raise _malformed(wheel, item, "has another name in its local header")  # zipfile refuses this too
    return item.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def _malformed(wheel: str, item: zipfile.ZipInfo, what: str) -> UnsafeContentError:
    return UnsafeContentError(f"wheel {wheel} is not a well-formed wheel: {item.filename} {what}", subject=wheel)


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
