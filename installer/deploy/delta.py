"""Installing a delta, and sharing a version's files with installed ones (docs/format.md, 11.1).

A delta's manifest lists every file of its version; the files marked ``"source": "base"`` are not
in its payload but must be taken from the installed base, which :func:`find_base` finds under the
prefix by the digest of its kept manifest (the one the delta's signed manifest names; so the base's
kept manifest is as trustworthy as the delta's own). :func:`plan_from_base` maps every such file to
a file of the base with the same hash and size, before anything is written: a delta that claims a
file the base does not have is refused then. :func:`fill_from_base` then makes each file in the
staging directory through :func:`~..host.share.share_file`, which hashes it against the delta's
signed manifest before it is used. The result is a complete version directory like any other.

:func:`share_installed` does the same for files that came out of the payload (a full bundle, or a
delta's new files) when an installed version already holds the same bytes: after the staged copy was
verified, it is replaced by a reflink or hard link of the installed file, which is hashed first. An
installed file that does not match is simply not used (the verified copy stays).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import GapshipError, IntegrityError, PolicyError
from ..formats.manifest import BaseRef, FileEntry, Manifest
from ..host.share import COPY, ShareCounts, Want, copies_only, share_file
from ..kit import Malformed, parse_json, read_bounded, read_optional
from ..trust import manifest_digest

RECEIPT = "receipt.json"
MANIFEST_COPY = "manifest.json"
MAX_KEPT_MANIFEST = 64 * 1024 * 1024  # MAX_MANIFEST_BYTES and then some: the kept copy is the signed one
MAX_RECEIPT = 1024 * 1024
MAX_SHARE_SOURCES = 16
MAX_FILL_THREADS = 8  # files made from the base at once  # installed versions looked at for files to share (each is a kept manifest parsed)
Select = Callable[[FileEntry], bool] | None


@dataclass(frozen=True)
class InstalledVersion:
    """A complete version directory (it has a receipt) and its kept manifest."""

    path: Path
    manifest: Manifest
    digest: str


def installed_versions(home: Path, *, skip: Iterable[str] = ()) -> Iterator[InstalledVersion]:
    """Every complete version directory under ``home`` whose kept manifest parses, newest name first;
    damaged or foreign ones are passed over (they are not this function's to judge)."""
    skipped = set(skip)
    try:
        entries = sorted(os.scandir(home), key=lambda e: e.name, reverse=True)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(".") or entry.name in skipped or entry.name == "current" \
                or not entry.is_dir(follow_symlinks=False):
            continue
        found = _read_version(Path(entry.path))
        if found is not None:
            yield found


def _read_version(path: Path) -> InstalledVersion | None:
    try:
        receipt = read_optional(path / RECEIPT, cap=MAX_RECEIPT, refuse=lambda r: Malformed(r.strerror))
        data = read_bounded(path / MANIFEST_COPY, cap=MAX_KEPT_MANIFEST, refuse=lambda r: Malformed(r.strerror))
        if receipt is None:
            return None
        m = Manifest.from_bytes(data)
    except (OSError, ValueError, GapshipError):
        return None
    return InstalledVersion(path=path, manifest=m, digest=manifest_digest(data, m.hash_algorithm))


def receipt_digest(path: Path) -> str | None:
    """The ``manifest_digest`` a version directory's receipt names, or None."""
    try:
        data = read_optional(path / RECEIPT, cap=MAX_RECEIPT, refuse=lambda r: Malformed(r.strerror))
        raw = parse_json(data, source=RECEIPT, error=Malformed) if data is not None else None
    except (OSError, ValueError):
        return None
    digest = raw.get("manifest_digest") if isinstance(raw, dict) else None
    return digest if isinstance(digest, str) else None


def find_base(prefix: Path, ref: BaseRef, *, needed_by: Manifest) -> InstalledVersion:
    """The installed version whose kept manifest has the digest ``ref`` names; else PolicyError (exit 5)
    naming the base the delta needs. The version directory named after the base is looked at first."""
    if ref.name != needed_by.name:  # build --base refuses it; the install holds only this name's lock
        raise PolicyError(f"{needed_by.name} {needed_by.version} names a base of another bundle, {ref.name}; "
                          "refusing it", subject=ref.manifest_digest)
    home = prefix / ref.name
    try:
        others = sorted((e.name for e in os.scandir(home) if e.name != ref.version and not e.name.startswith(".")),
                        reverse=True)
    except FileNotFoundError:
        others = []
    candidates = [home / ref.version, *(home / name for name in others)]
    for path in candidates:
        if path.is_symlink() or receipt_digest(path) != ref.manifest_digest:  # the cheap test first
            continue
        found = _read_version(path)
        if found is not None and found.digest == ref.manifest_digest:
            return found
    raise PolicyError(f"{needed_by.name} {needed_by.version} is a delta of {ref.name} {ref.version} "
                      f"({ref.manifest_digest}), which is not installed at {prefix}; install that version "
                      "(or a full bundle) first", subject=ref.manifest_digest)


def plan_from_base(m: Manifest, base: InstalledVersion, select: Select) -> list[tuple[FileEntry, Path]]:
    """Each file the delta takes from its base (and this site installs), with the base file it is made
    from; refuse (exit 3) a file whose hash and size the base does not have, before anything is written."""
    index: dict[tuple[str, int], list[str]] = {}
    for f in base.manifest.files():
        index.setdefault((f.hash, f.size), []).append(f.path)
    plan: list[tuple[FileEntry, Path]] = []
    for f in m.base_files():
        if select is not None and not select(f):
            continue
        paths = index.get((f.hash, f.size))
        if not paths:
            raise IntegrityError(f"{f.path} of {m.name} {m.version} is to come from its base {base.manifest.version}, "
                                 f"which has no file of that {m.hash_algorithm} hash and size", subject=f.path)
        present = [p for p in paths if os.path.lexists(base.path / p)]
        if not present:
            raise PolicyError(f"{f.path} of {m.name} {m.version} is to come from its base at {base.path}, which "
                              f"does not hold it (not installed on this site?)", subject=f.path)
        plan.append((f, base.path / present[0]))
    return plan


def fill_from_base(staging: Path, m: Manifest, plan: list[tuple[FileEntry, Path]], counts: ShareCounts) -> None:
    """Make each planned file in ``staging`` from the installed base, checked against ``m``'s hash first.

    Several files at once, one per core: each is a hash pass (and for a copy a write) over its bytes,
    and hashlib and os.write release the GIL, so a delta of a few large files takes the wall time of
    the largest rather than of all (docs/benchmarks.md, "Delta bundles"). The first error is raised
    once every started file is done; the caller then removes the staging directory."""
    for f, _ in plan:
        (staging / f.path).parent.mkdir(parents=True, exist_ok=True)

    def make(item: tuple[FileEntry, Path]) -> str:
        f, source = item
        return share_file(source, staging / f.path, Want(f.path, f.hash, f.size, f.mode, m.hash_algorithm)) or COPY

    if len(plan) <= 1:
        methods = [make(item) for item in plan]
    else:
        with ThreadPoolExecutor(max_workers=min(len(plan), os.cpu_count() or 1, MAX_FILL_THREADS),
                                thread_name_prefix="gapship-base") as pool:
            methods = list(pool.map(make, plan))
    for method in methods:
        counts.add(method)


def share_installed(staging: Path, m: Manifest, home: Path, *, skip: str, select: Select,
                    counts: ShareCounts) -> None:
    """Replace verified payload files in ``staging`` by reflinks or hard links of installed files with
    the same bytes (module docstring); copies gain nothing, so a file that cannot be linked stays."""
    if copies_only():
        return
    index: dict[tuple[str, int], Path] = {}
    for i, version in enumerate(installed_versions(home, skip=[skip])):
        if i >= MAX_SHARE_SOURCES:
            break
        if version.manifest.hash_algorithm != m.hash_algorithm:
            continue
        for f in version.manifest.files():
            index.setdefault((f.hash, f.size), version.path / f.path)
    if not index:
        return
    for f in m.payload_files():
        source = index.get((f.hash, f.size))
        if source is None or f.size == 0 or f.path.startswith("safeguards/"):  # the policy stays its own
            continue
        if select is not None and not select(f):
            continue
        staged = staging / f.path
        spare = staged.with_name(f".{staged.name}.share")
        try:
            method = share_file(source, spare, Want(f.path, f.hash, f.size, f.mode, m.hash_algorithm), copy=False)
        except IntegrityError:
            continue  # changed on disk: keep the verified copy from the payload
        if method is not None:
            os.replace(spare, staged)
            counts.add(method)
