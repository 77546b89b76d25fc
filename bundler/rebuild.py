"""Independent rebuilds: ``gapship build SPEC --check-against BUNDLE`` (docs/sbom.md, "Independent rebuilds").

A second build machine rebuilds a release from the same inputs, with the release's own creation time
as ``SOURCE_DATE_EPOCH`` and its chunk size, hash and expiry, and confirms that the manifest it makes
is byte for byte the release's. The manifest pins every chunk and file by hash, the SBOM included,
so equal manifests mean equal bundles but for the signatures (which differ with the key). When they
differ, the first file that differs is named (exit 3), else the first top-level field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..installer.bundle.files import MANIFEST, read_capped
from ..installer.errors import IntegrityError, UsageError
from ..installer.formats.manifest import MAX_MANIFEST_BYTES, FileEntry, Manifest
from ..installer.trust import manifest_digest


@dataclass(frozen=True)
class Reference:
    """The release to rebuild: the digest of its manifest's bytes, read as they are (nothing is
    trusted: only compared), and the fields the rebuild takes from it. Neither the bytes nor the parsed
    manifest are kept through the rebuild (at the file cap they are 30 MB and more, on top of the
    build's own, which kept ``build --check-against`` over 200 MB): equal digests are equal bytes, and
    :attr:`manifest` reads the file again only to name a difference."""

    path: Path
    digest: str  # manifest_digest of the bytes read, "<algorithm>:<hex>"
    name: str
    version: str
    created_text: str
    expires: str | None
    hash_algorithm: str
    chunk_size: int

    @property
    def manifest(self) -> Manifest:
        return Manifest.from_bytes(read_manifest(self.path))

    @property
    def created(self) -> datetime:
        """Its ``created``: the ``SOURCE_DATE_EPOCH`` the rebuild uses."""
        return datetime.strptime(self.created_text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def load_reference(bundle: Path) -> Reference:
    if not bundle.is_dir():
        raise UsageError(f"--check-against {str(bundle)!r} is not a bundle directory", subject=str(bundle))
    data = read_manifest(bundle)
    m = Manifest.from_bytes(data)
    return Reference(path=bundle, digest=manifest_digest(data, m.hash_algorithm), name=m.name, version=m.version, created_text=m.created,
                     expires=m.expires, hash_algorithm=m.hash_algorithm, chunk_size=m.chunk_size)


def read_manifest(bundle: Path) -> bytes:
    """A bundle's ``manifest.json``, read through the bounded reader (the release's, or the rebuild's)."""
    return read_capped(bundle / MANIFEST, MAX_MANIFEST_BYTES, missing=IntegrityError)


@dataclass(frozen=True)
class RebuildResult:
    reference: Reference
    identical: bool

    def to_dict(self) -> dict[str, object]:
        return {"against": str(self.reference.path), "identical": self.identical,
                "manifest_digest": self.reference.digest,
                "source_date_epoch": int(self.reference.created.timestamp())}


def check_same(reference: Reference, rebuilt: bytes) -> RebuildResult:
    """Return when ``rebuilt`` is exactly the reference's manifest; else raise naming the first difference."""
    if manifest_digest(rebuilt, reference.hash_algorithm) == reference.digest:
        return RebuildResult(reference=reference, identical=True)
    ours = Manifest.from_bytes(rebuilt)
    difference = first_difference(reference.manifest, ours)
    raise IntegrityError(f"the rebuild is not {reference.name} {reference.version} at "
                         f"{reference.path}: {difference}", subject=difference.split(" ", 1)[0],
                         hint="the inputs or the builder differ; compare the two SBOMs and provenances")


def first_difference(theirs: Manifest, ours: Manifest) -> str:
    """``<path> differs (...)`` for the first file, in manifest order, that differs, is missing or is extra;
    else the first top-level field."""
    a, b = list(theirs.files()), list(ours.files())
    paths_a, paths_b = {f.path for f in a}, {f.path for f in b}
    for i in range(max(len(a), len(b))):
        if i < len(b) and b[i].path not in paths_a:
            return f"{b[i].path} is in the rebuild only"
        if i < len(a) and a[i].path not in paths_b:
            return f"{a[i].path} is missing from the rebuild"
        if i >= len(a):
            return f"{b[i].path} is in the rebuild only"
        if i >= len(b):
            return f"{a[i].path} is missing from the rebuild"
        if _key(a[i]) != _key(b[i]):
            return _file_difference(a[i], b[i])
    for field in ("name", "version", "created", "expires", "hash_algorithm", "chunk_size", "format_version",
                  "payload_size"):
        if getattr(theirs, field) != getattr(ours, field):
            return f"{field} differs ({getattr(theirs, field)!r} in the release, {getattr(ours, field)!r} rebuilt)"
    return "the manifest differs (components or chunks)"


def _key(f: FileEntry) -> tuple[object, ...]:
    return (f.path, f.size, f.mode, f.hash, f.offset, f.from_base)


def _file_difference(a: FileEntry, b: FileEntry) -> str:
    if a.path != b.path:
        return f"{a.path} differs (the rebuild has {b.path} in its place)"
    for what, x, y in (("size", a.size, b.size), ("hash", a.hash, b.hash), ("mode", f"{a.mode:o}", f"{b.mode:o}"),
                       ("offset", a.offset, b.offset), ("source", a.from_base, b.from_base)):
        if x != y:
            return f"{a.path} differs ({what} {x} in the release, {y} rebuilt)"
    return f"{a.path} differs"
