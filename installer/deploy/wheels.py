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

import hashlib
import os
import posixpath
import subprocess
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from installer import install as install_wheel
from installer.destinations import SchemeDictionaryDestination
from installer.records import Hash, RecordEntry
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
    """Unpack each chosen wheel into ``venv`` (made by ``python -m venv``, at its final path)."""
    scheme = scheme_paths(venv, python_version)
    for choice in choices:
        _install_one(choice.path, scheme)


def scheme_paths(venv: Path, python_version: str) -> dict[str, str]:
    """Where a venv's python puts each scheme on POSIX (``sysconfig``'s ``venv`` / ``posix_prefix``),
    the layout ``adopt.check_venv`` checks."""
    site = str(venv / "lib" / f"python{python_version}" / "site-packages")
    return {"purelib": site, "platlib": site, "scripts": str(venv / "bin"), "data": str(venv),
            "headers": str(venv / "include" / "site" / f"python{python_version}")}


def _install_one(path: Path, scheme: dict[str, str]) -> None:
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
                                   script_kind="posix", wheel=path.name)
        try:
            install_wheel(source, destination, {"INSTALLER": INSTALLER_NAME, "REQUESTED": b""})
        except (UnsafeContentError, HostError):
            raise
        except OSError as e:
            raise HostError(f"cannot install wheel {path.name}: {e.strerror or e}", subject=path.name) from None
        except Exception as e:  # pypa/installer's InvalidWheelSource, ValueError (a path leaving its scheme)
            raise UnsafeContentError(f"cannot install wheel {path.name}: {_one_line(e)}", subject=path.name) from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


class _CheckedSource(WheelFile):
    """The wheel, with each file's stream checked against its ``RECORD`` entry while it is read."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        super().__init__(archive)
        self._wheel_name = Path(archive.filename or "").name

    def get_contents(self) -> Iterator[WheelContentElement]:
        record_path = f"{self.dist_info_dir}/RECORD"
        for elements, stream, is_executable in super().get_contents():
            entry = RecordEntry.from_elements(*elements)
            if entry.path == record_path or entry.hash_ is None or entry.size is None:
                yield elements, stream, is_executable  # RECORD itself, and signatures (RECORD.jws): not installed
                continue
            yield elements, cast(BinaryIO, _Checked(stream, entry, self._wheel_name)), is_executable


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
            digest = RecordEntry(self._entry.path, Hash(self._want.name, _b64(self._hash.digest())), self._size)
            if self._size != self._entry.size or digest.hash_ != self._want:
                self._refuse("does not match")
        return data

    def _refuse(self, what: str) -> None:
        raise UnsafeContentError(f"{self._entry.path} in wheel {self._wheel} {what} its RECORD entry",
                                 subject=self._wheel)


def _b64(digest: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@dataclass
class _Destination(SchemeDictionaryDestination):
    """pypa/installer's destination, writing with fixed modes and ``O_EXCL | O_NOFOLLOW``."""

    wheel: str = ""

    def write_to_fs(self, scheme: Scheme, path: str, stream: BinaryIO, is_executable: bool) -> RecordEntry:
        target = self._path_with_destdir(scheme, path)  # refuses a path that leaves its scheme (ValueError)
        _make_parents(target.parent, Path(self.scheme_dict[scheme]))
        mode = _EXEC_MODE if is_executable else _FILE_MODE
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except FileExistsError:
            raise UnsafeContentError(f"wheel {self.wheel} would overwrite {path}, which another wheel or the venv "
                                     "already has", subject=self.wheel) from None
        h, size = hashlib.new(self.hash_algorithm), 0
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # not the caller's umask: 000 would make it world-writable
            while block := stream.read(_BLOCK):
                h.update(block)
                size += len(block)
                out.write(block)
        return RecordEntry(path, Hash(self.hash_algorithm, _b64(h.digest())), size)

    def write_script(self, name: str, module: str, attr: str, section: ScriptSection) -> RecordEntry:
        entry = super().write_script(name, module, attr, section)
        os.chmod(self._path_with_destdir(Scheme("scripts"), entry.path), _EXEC_MODE)  # base class ORs in the umask
        return entry


def _make_parents(folder: Path, root: Path) -> None:
    """Create ``folder`` and its missing parents up to ``root``, 0755 whatever the umask."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder == root or folder.parent == folder:
            break
        folder = folder.parent
    for each in reversed(missing):
        os.mkdir(each, _DIR_MODE)
        os.chmod(each, _DIR_MODE)


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
