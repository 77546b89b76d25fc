"""Checking an existing version directory before it is adopted as "already installed" (docs/format.md,
"Install layout", and docs/site-admin.md, "A version directory that is already there").

A ``PREFIX/<name>/<version>/`` that holds a ``receipt.json`` with the right manifest digest proves
nothing: the digest is public. So before ``current`` may point at it, :func:`check_version_dir`
compares the whole directory with what this install would have written, and raises
:class:`~gapship.installer.errors.IntegrityError` (exit 3) naming the first path that differs:

- nothing extra and nothing missing: exactly the payload files this site installs (the site
  decision's selection), their directories, ``manifest.json``, ``signatures/``, ``receipt.json``,
  the site records, and ``venv/`` when the bundle has dependencies;
- every entry a real directory or regular file (no symlink, device, FIFO; a file with one link, or
  a payload file shared read-only with another version by hard link),
  owned by the user installing or root, with the mode an install gives it (directories 755,
  ``safeguards/`` and the site records read-only, payload files their manifest mode, records 644);
- payload files of their manifest size and hash;
- ``manifest.json`` byte for byte the verified manifest, each kept signature byte for byte one of
  the bundle's, the receipt naming this bundle, manifest, site decision and dependencies, and
  ``effective-policy.json`` and the kept authorizations exactly what this site decision writes
  (the policy's ``decided_at`` is taken from the kept file, the only field that may differ);
- the venv as :func:`check_venv` says.

Nothing is repaired: a directory that differs is evidence, so it is left for the admin to look at
and move away. Interpreter caches are the exception: ``__pycache__`` directories the manifest does
not list are removed before the check (an adopted ``.pyc`` would be unverified code; Python makes
them again from the verified sources).
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import os
import re
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..bundle.files import SIGNATURES
from ..crypto.hashing import Progress, hash_fd, no_progress
from ..errors import IntegrityError, UnsafeContentError
from ..formats.authorization import DOCUMENT
from ..formats.timestamps import parse_time
from ..host.fs import remove_tree
from ..host.share import read_only
from ..host.strict import UNSAFE_BITS, installer_uid
from ..kit import Malformed, Refusal, canonical_json, open_regular, parse_json, read_bounded
from ..provenance import MAX_STATEMENT_BYTES, PROVENANCE, STATEMENT, VerifiedProvenance
from ..sbom import SBOM_DIR
from ..safeguards import EFFECTIVE_POLICY, INSTALLED_AUTHORIZATIONS, SAFEGUARDS_DIR, SiteDecision
from ..trust import VerifiedManifest
from .deps import VENV, WHEELS, DependencyPlan

RECEIPT = "receipt.json"
MANIFEST_COPY = "manifest.json"
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a RECORD of a large wheel (torch) is a few MiB
MAX_SMALL_BYTES = 32 * 1024 * 1024
CACHE_DIR = "__pycache__"


class _Differs(Exception):
    """The first difference found: a path relative to the version directory and what is wrong."""

    def __init__(self, rel: str, problem: str) -> None:
        super().__init__(f"{rel} {problem}")
        self.rel = rel
        self.problem = problem


@dataclass(frozen=True)
class _Want:
    kind: str  # "dir" | "file"
    mode: int
    size: int | None = None
    shareable: bool = False  # a payload file: may be shared with another version (below)


@dataclass
class _Layout:
    """What the directory must hold: relative path -> kind and mode."""

    entries: dict[str, _Want] = field(default_factory=dict)

    def file(self, rel: str, mode: int, size: int | None = None, *, shareable: bool = False) -> None:
        for parent in _parents(rel):
            self.entries.setdefault(parent, _Want("dir", _dir_mode(parent)))
        self.entries[rel] = _Want("file", mode, size, shareable)

    def dir(self, rel: str) -> None:
        for parent in (*_parents(rel), rel):
            self.entries.setdefault(parent, _Want("dir", _dir_mode(parent)))


def check_version_dir(target: Path, verified: VerifiedManifest, *, site: SiteDecision | None,
                      deps: DependencyPlan | None, receipt: dict[str, object],
                      progress: Progress = no_progress, provenance: VerifiedProvenance | None = None) -> None:
    """Return if ``target`` is exactly what installing ``verified`` here would have made (module
    docstring); raise :class:`IntegrityError` naming the first path that is not."""
    m = verified.manifest
    try:
        st = os.lstat(target)
        if not stat.S_ISDIR(st.st_mode):
            raise _Differs(".", "is not a directory")
        _check_owner(".", st, want=0o755)
        caches = _caches(target, verified)
        _walk(target, _layout(verified, site, provenance), skip=caches, venv=deps is not None)
        _check_records(target, verified, site=site, deps=deps, receipt=receipt)
        _check_provenance(target, provenance)
        _check_payload(target, verified, site, progress)
        if deps is not None:
            check_venv(target, deps, caches=caches)
    except _Differs as d:
        where = target if d.rel == "." else target / d.rel
        raise IntegrityError(f"{m.name} {m.version} is already at {target}, but it is not what this install "
                             f"writes: {where} {d.problem}; refusing to adopt it", subject=str(where),
                             hint=f"look at {target}, move it away, and install again") from None
    except OSError as e:
        raise IntegrityError(f"cannot check {target} before adopting it: {e.strerror or e}",
                             subject=str(target)) from None
    for rel in sorted(caches):
        remove_tree(target / rel)


# -- the layout -----------------------------------------------------------------------------------------


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _read_only(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    return top in (SAFEGUARDS_DIR, INSTALLED_AUTHORIZATIONS, EFFECTIVE_POLICY, SBOM_DIR, PROVENANCE)


def _dir_mode(rel: str) -> int:
    return 0o555 if _read_only(rel) else 0o755


def _layout(verified: VerifiedManifest, site: SiteDecision | None,
            provenance: VerifiedProvenance | None = None) -> _Layout:
    layout = _Layout()
    for f in verified.manifest.files():
        if site is None or site.select(f):
            layout.file(f.path, 0o444 if _read_only(f.path) else f.mode, f.size, shareable=True)
    layout.file(MANIFEST_COPY, 0o644, len(verified.manifest_bytes))
    layout.file(RECEIPT, 0o644)
    layout.dir(SIGNATURES)
    if site is not None:
        layout.file(EFFECTIVE_POLICY, 0o444)
        if site.authorizations:
            layout.dir(INSTALLED_AUTHORIZATIONS)
        for auth in site.authorizations:
            folder = f"{INSTALLED_AUTHORIZATIONS}/{auth.digest.replace(':', '-')}"
            layout.file(f"{folder}/{DOCUMENT}", 0o444, len(auth.document))
            for name, data in auth.signature_files.items():
                layout.file(f"{folder}/{SIGNATURES}/{name}", 0o444, len(data))
    if provenance is not None:  # docs/sbom.md: installed read-only beside the version
        layout.file(f"{PROVENANCE}/{STATEMENT}", 0o444, len(provenance.statement))
        layout.dir(f"{PROVENANCE}/{SIGNATURES}")
        for name, data in provenance.signature_files.items():
            layout.file(f"{PROVENANCE}/{SIGNATURES}/{name}", 0o444, len(data))
    return layout


def _walk(target: Path, layout: _Layout, *, skip: frozenset[str], venv: bool) -> None:
    """Every entry present is expected, of its kind and mode; then every expected entry is present.
    Kept signatures (``signatures/*``) are compared by content in :func:`_check_records`; the venv
    is :func:`check_venv`'s."""
    if venv:
        layout.entries[VENV] = _Want("dir", 0o755)
    seen: set[str] = set()
    for rel, st in _entries(target, skip=skip | ({VENV} if venv else set())):
        if rel.startswith(f"{SIGNATURES}/") and rel.count("/") == 1:
            _check_owner(rel, st, want=0o644, regular=True)
            seen.add(rel)
            continue
        want = layout.entries.get(rel)
        if want is None:
            raise _Differs(rel, "is not part of this install")
        _check_kind(rel, st, want)
        seen.add(rel)
    missing = sorted(set(layout.entries) - seen)
    if missing:
        raise _Differs(missing[0], "is missing")


def _entries(root: Path, rel: str = "", *, skip: frozenset[str] | set[str] = frozenset()
             ) -> Iterator[tuple[str, os.stat_result]]:
    """(path relative to ``root``, lstat) of everything under ``root / rel``, sorted, never following
    a symlink; a directory in ``skip`` is yielded but not entered, an interpreter cache not even yielded."""
    with os.scandir(root / rel if rel else root) as it:
        found = sorted(it, key=lambda e: e.name)
    for entry in found:
        sub = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        if sub in skip and entry.name == CACHE_DIR:
            continue
        yield sub, st
        if stat.S_ISDIR(st.st_mode) and sub not in skip:
            yield from _entries(root, sub, skip=skip)


def _check_kind(rel: str, st: os.stat_result, want: _Want) -> None:
    if want.kind == "dir":
        if not stat.S_ISDIR(st.st_mode):
            raise _Differs(rel, f"is {_kind(st.st_mode)}, not a directory")
        _check_owner(rel, st, want=want.mode)
        return
    if want.shareable and _shared(st, want.mode):
        _check_owner(rel, st, want=read_only(want.mode), regular=True, links_ok=True)
    else:
        _check_owner(rel, st, want=want.mode, regular=True)
    if want.size is not None and st.st_size != want.size:
        raise _Differs(rel, f"is {st.st_size} bytes, not {want.size}")


def _shared(st: os.stat_result, mode: int) -> bool:
    """A payload file shared with another version by hard link (host/share.py) is read-only and may
    have several links; it is still checked by content below, which is what counts (docs/format.md,
    section 8.3). A read-only file with one link is one whose other version was removed."""
    return stat.S_IMODE(st.st_mode) == read_only(mode) != mode


def _check_owner(rel: str, st: os.stat_result, *, want: int | None, regular: bool = False,
                 links_ok: bool = False) -> None:
    if regular and not stat.S_ISREG(st.st_mode):
        raise _Differs(rel, f"is {_kind(st.st_mode)}, not a regular file")
    if regular and st.st_nlink != 1 and not links_ok:
        raise _Differs(rel, f"has {st.st_nlink} hard links (an install makes one)")
    uid = installer_uid()
    if st.st_uid not in (uid, 0):
        raise _Differs(rel, f"is owned by uid {st.st_uid}, not by the user installing (uid {uid}) or root")
    mode = stat.S_IMODE(st.st_mode)
    if want is not None and mode != want:
        raise _Differs(rel, f"has mode {mode:o}, not {want:o}")
    if want is None and mode & (UNSAFE_BITS | stat.S_ISUID | stat.S_ISGID):
        raise _Differs(rel, f"has mode {mode:o} (writable by group or others, or setuid/setgid)")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a file"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a device"


def _caches(target: Path, verified: VerifiedManifest) -> frozenset[str]:
    """``__pycache__`` directories (real ones, not symlinks) the manifest does not list, anywhere in
    the version directory: skipped by the checks, removed once the directory is adopted."""
    listed = {p for f in verified.manifest.files() for p in _parents(f.path) if p.rsplit("/", 1)[-1] == CACHE_DIR}
    found: set[str] = set()
    for dirpath, dirnames, _files in os.walk(target):
        rel_dir = Path(dirpath).relative_to(target).as_posix()
        for name in list(dirnames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if name == CACHE_DIR and rel not in listed and not os.path.islink(os.path.join(dirpath, name)):
                found.add(rel)
                dirnames.remove(name)
    return frozenset(found)


# -- the records ------------------------------------------------------------------------------------------


def _read(target: Path, rel: str, cap: int = MAX_SMALL_BYTES) -> bytes:
    def refuse(r: Refusal) -> Exception:
        return _Differs(rel, f"cannot be read: {r.strerror}")

    return read_bounded(target / rel, cap=cap, refuse=refuse)


def _check_records(target: Path, verified: VerifiedManifest, *, site: SiteDecision | None,
                   deps: DependencyPlan | None, receipt: dict[str, object]) -> None:
    m = verified.manifest
    if _read(target, MANIFEST_COPY) != verified.manifest_bytes:
        raise _Differs(MANIFEST_COPY, "differs from the verified manifest")
    kept = sorted(os.listdir(target / SIGNATURES))
    if not kept:
        raise _Differs(SIGNATURES, "is empty")
    for name in kept:
        if verified.signature_files.get(name) != _read(target, f"{SIGNATURES}/{name}"):
            raise _Differs(f"{SIGNATURES}/{name}", "is not one of the bundle's signature files")
    expected = {"bundle": {"name": m.name, "version": m.version}, "manifest_digest": verified.digest,
                "files": m.file_count, "bytes": m.file_bytes,
                "site": site.summary() if site else None}
    for key, value in expected.items():
        if receipt.get(key) != value:
            raise _Differs(RECEIPT, f"records another {key} than this install")
    if (deps is None) != ("dependencies" not in receipt):
        raise _Differs(RECEIPT, "records other dependencies than this install")
    if site is not None:
        _check_site_records(target, verified, site)


def _check_provenance(target: Path, provenance: VerifiedProvenance | None) -> None:
    if provenance is None:
        return
    if _read(target, f"{PROVENANCE}/{STATEMENT}", MAX_STATEMENT_BYTES) != provenance.statement:
        raise _Differs(f"{PROVENANCE}/{STATEMENT}", "differs from the bundle's provenance")
    for name, data in provenance.signature_files.items():
        if _read(target, f"{PROVENANCE}/{SIGNATURES}/{name}") != data:
            raise _Differs(f"{PROVENANCE}/{SIGNATURES}/{name}", "differs from the bundle's provenance signature")


def _check_site_records(target: Path, verified: VerifiedManifest, site: SiteDecision) -> None:
    data = _read(target, EFFECTIVE_POLICY)
    try:
        kept = parse_json(data, source=EFFECTIVE_POLICY, error=Malformed)
        decided = parse_time(str(kept["decided_at"]), what="decided_at")
    except (ValueError, KeyError, TypeError, UnsafeContentError):
        raise _Differs(EFFECTIVE_POLICY, "is not an effective policy") from None
    if data != canonical_json(site.effective_policy(verified, now=decided)) + b"\n":
        raise _Differs(EFFECTIVE_POLICY, "differs from this site decision")
    for auth in site.authorizations:
        folder = f"{INSTALLED_AUTHORIZATIONS}/{auth.digest.replace(':', '-')}"
        if _read(target, f"{folder}/{DOCUMENT}") != auth.document:
            raise _Differs(f"{folder}/{DOCUMENT}", "differs from the authorization in force")
        for name, sig in auth.signature_files.items():
            if _read(target, f"{folder}/{SIGNATURES}/{name}") != sig:
                raise _Differs(f"{folder}/{SIGNATURES}/{name}", "differs from the authorization in force")


def _check_payload(target: Path, verified: VerifiedManifest, site: SiteDecision | None, progress: Progress) -> None:
    m = verified.manifest
    buffer = bytearray(4 * 1024 * 1024)
    for f in m.files():
        if site is not None and not site.select(f):
            continue
        fd, st = open_regular(target / f.path, refuse=lambda r: _Differs(f.path, f"cannot be read: {r.strerror}"))
        try:
            digest, seen = hash_fd(fd, m.hash_algorithm, limit=f.size, buffer=buffer, progress=progress)
        finally:
            os.close(fd)
        if seen != f.size or digest != f.hash:
            raise _Differs(f.path, f"does not match its {m.hash_algorithm} hash in the signed manifest")


# -- the venv ---------------------------------------------------------------------------------------------

_VENV_OWN_SCRIPTS = frozenset({"activate", "activate.csh", "activate.fish", "Activate.ps1"})
_VENV_OWN_FILES = frozenset({"pyvenv.cfg", ".gitignore"})
_INSTALLER_METADATA = ("INSTALLER", "REQUESTED", "RECORD", "direct_url.json")
_PYTHON_LINK = re.compile(r"python(3(\.\d+)?)?")


@dataclass
class _VenvWant:
    """What the wheels put into the venv (paths relative to the venv): file -> the sha256 of the
    wheel's RECORD (urlsafe base64), or None for a file allowed by name only; and their directories."""

    version: str
    files: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str | None] = field(default_factory=dict)  # under include/site/pythonX.Y/<project>/

    @property
    def site_packages(self) -> str:
        return f"lib/python{self.version}/site-packages"

    def dirs(self) -> set[str]:
        out = {"bin", "include", "lib", f"lib/python{self.version}", self.site_packages}
        out.update(p for f in self.files for p in _parents(f))
        return out


def check_venv(target: Path, deps: DependencyPlan, *, caches: frozenset[str] = frozenset()) -> None:
    """The venv of a version directory, against the verified wheels it was made from (docs/format.md,
    "Install layout"). Every file under ``site-packages`` (and a wheel's ``.data/data`` and header
    files) is a file of one of the lock's wheels with the hash the wheel's own ``RECORD`` gives it, or
    installer metadata (``INSTALLER``, ``REQUESTED``, ``RECORD``, ``direct_url.json``) in the
    ``.dist-info`` of one of them; ``bin/`` holds the venv's ``python`` links, which must resolve to
    the planned interpreter, its ``activate`` scripts and the wheels' scripts; ``pyvenv.cfg`` says
    ``include-system-site-packages = false``; ``lib64`` may link to ``lib``. Nothing else, no other
    symlink, nothing writable by group or others. Allowed by name, not checked by content: the
    ``activate`` scripts and the wheels' scripts (pip writes them; a shell or a person runs them, the
    serving process does not), pip's metadata files, and ``pyvenv.cfg`` beyond that one key."""
    want = _venv_want(target, deps)
    interpreter = os.path.realpath(deps.interpreter.executable)
    dirs = want.dirs()
    for full, st in _entries(target, VENV, skip=caches):
        rel = full[len(VENV) + 1:]
        if stat.S_ISLNK(st.st_mode):
            _check_venv_link(target, full, rel, interpreter)
        elif stat.S_ISDIR(st.st_mode):
            _check_owner(full, st, want=None)
            if rel not in dirs and not rel.startswith("include/"):
                raise _Differs(full, "is not part of this venv")
        else:
            _check_owner(full, st, want=None, regular=True)
            _check_venv_file(target, full, rel, want)
    _check_pyvenv_cfg(target, f"{VENV}/pyvenv.cfg")


def _check_venv_link(target: Path, full: str, rel: str, interpreter: str) -> None:
    if rel == "lib64" and os.readlink(target / full) == "lib":
        return
    if rel.startswith("bin/") and _PYTHON_LINK.fullmatch(rel[4:]):
        if os.path.realpath(target / full) == interpreter:
            return
        raise _Differs(full, f"does not lead to the planned interpreter {interpreter}")
    raise _Differs(full, "is a symlink that a venv does not have")


def _check_venv_file(target: Path, full: str, rel: str, want: _VenvWant) -> None:
    if rel in _VENV_OWN_FILES or (rel.startswith("bin/") and rel[4:] in _VENV_OWN_SCRIPTS):
        return
    headers = f"include/site/python{want.version}/"
    if rel.startswith(headers) and rel.count("/") > headers.count("/"):
        table, key = want.headers, rel[len(headers):].split("/", 1)[1]
    else:
        table, key = want.files, rel
    if key not in table:
        raise _Differs(full, "is not a file of the bundle's wheels")
    expected = table[key]
    if expected is not None and _sha256_b64(target / full) != expected:
        raise _Differs(full, "does not match the hash in its wheel's RECORD")


def _check_pyvenv_cfg(target: Path, rel: str) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string("[venv]\n" + _read(target, rel, 64 * 1024).decode("utf-8"))
        isolated = parser.get("venv", "include-system-site-packages").strip().lower() == "false"
    except (configparser.Error, UnicodeDecodeError):
        isolated = False
    if not isolated:
        raise _Differs(rel, "does not say include-system-site-packages = false")


def _venv_want(target: Path, deps: DependencyPlan) -> _VenvWant:
    """The files each wheel the lock names puts into the venv, with the hashes of its RECORD."""
    want = _VenvWant(version=deps.interpreter.version)
    locked = {h.removeprefix("sha256:") for pin in deps.pins for h in pin.hashes}
    site_packages = target / VENV / want.site_packages
    present = set(os.listdir(site_packages)) if site_packages.is_dir() and not site_packages.is_symlink() else set()
    installed = 0
    for name in sorted(deps.wheels):
        path = target / WHEELS / name
        if _sha256_hex(path) not in locked:
            continue  # gapship's own wheel (--include-gapship): carried, not installed
        with zipfile.ZipFile(path) as whl:
            record, info = _wheel_record(whl, name)
            if info not in present:
                continue  # another platform's wheel of a pinned package
            installed += 1
            for entry, digest in record.items():
                _place(want, entry, digest, info)
            for extra in _INSTALLER_METADATA:
                want.files.setdefault(f"{want.site_packages}/{info}/{extra}", None)
            for script in _scripts(whl, info):
                want.files.setdefault(f"bin/{script}", None)
    if installed < len(deps.pins):
        raise _Differs(f"{VENV}/{want.site_packages}", f"holds {installed} of the lock's {len(deps.pins)} packages")
    return want


def _place(want: _VenvWant, entry: str, digest: str | None, info: str) -> None:
    """Where pip puts one RECORD entry of a wheel (the RECORD itself is pip's to rewrite)."""
    data = info.removesuffix(".dist-info") + ".data/"
    if entry == f"{info}/RECORD" or entry.startswith(f"{info}/RECORD."):
        return
    if not entry.startswith(data):
        want.files[f"{want.site_packages}/{entry}"] = digest
        return
    kind, _, rest = entry[len(data):].partition("/")
    if kind in ("purelib", "platlib"):
        want.files[f"{want.site_packages}/{rest}"] = digest
    elif kind == "data":
        want.files[rest] = digest
    elif kind == "headers":
        want.headers[rest] = digest
    # scripts: pip rewrites their first line; allowed by name (_scripts), content not checked


def _wheel_record(whl: zipfile.ZipFile, name: str) -> tuple[dict[str, str | None], str]:
    """The wheel's RECORD (entry -> urlsafe-base64 sha256, or None) and its .dist-info directory name."""
    names = [n for n in whl.namelist() if n.endswith(".dist-info/RECORD") and n.count("/") == 1]
    if len(names) != 1 or whl.getinfo(names[0]).file_size > MAX_RECORD_BYTES:
        raise _Differs(f"{WHEELS}{name}", "has no single .dist-info/RECORD under the cap")
    record: dict[str, str | None] = {}
    for line in whl.read(names[0]).decode("utf-8", errors="replace").splitlines():
        entry, _, rest = line.partition(",")
        digest = rest.partition(",")[0]
        record[entry] = digest.removeprefix("sha256=") if digest.startswith("sha256=") else None
    return record, names[0].split("/", 1)[0]


class _CaseConfig(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _scripts(whl: zipfile.ZipFile, info: str) -> set[str]:
    """Script names a wheel brings: its ``.data/scripts`` and its entry points."""
    data = info.removesuffix(".dist-info") + ".data/scripts/"
    names = {n[len(data):] for n in whl.namelist() if n.startswith(data) and n != data}
    entry_points = f"{info}/entry_points.txt"
    if entry_points in whl.namelist() and whl.getinfo(entry_points).file_size <= MAX_SMALL_BYTES:
        parser = _CaseConfig(delimiters=("=",), interpolation=None)
        try:
            parser.read_string(whl.read(entry_points).decode("utf-8", errors="replace"))
        except configparser.Error:
            return names
        for section in ("console_scripts", "gui_scripts"):
            if parser.has_section(section):
                names.update(k.strip() for k in parser.options(section))
    return names


def _hash_file(path: Path) -> hashlib._Hash:
    h = hashlib.sha256()
    fd, _st = open_regular(path, refuse=lambda r: _Differs(str(path), f"cannot be read: {r.strerror}"))
    try:
        while block := os.read(fd, 4 * 1024 * 1024):
            h.update(block)
    finally:
        os.close(fd)
    return h


def _sha256_hex(path: Path) -> str:
    return _hash_file(path).hexdigest()


def _sha256_b64(path: Path) -> str:
    return base64.urlsafe_b64encode(_hash_file(path).digest()).rstrip(b"=").decode("ascii")
