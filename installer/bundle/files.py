"""Reading the files of a bundle directory (docs/format.md, "Layout"), with hard caps.

Nothing here interprets what it reads: it returns bytes for :mod:`gapship.installer.trust` to verify, and opens chunk
files without following symlinks. Every folder is listed with a cap on its entries, and what a bundle
carries outside its manifest (``signatures/``, ``roots/``, ``authorizations/``: unverified until
checked) is read under one total :class:`Budget`, charged before each file is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HostError, IntegrityError, TrustError, UsageError
from ..formats.manifest import MAX_MANIFEST_BYTES
from ..formats.manifest import MAX_CHUNKS
from ..kit import Refusal, list_bounded, open_regular, read_bounded

MANIFEST = "manifest.json"
SIGNATURES = "signatures"
CHUNKS = "chunks"
PARITY = "parity"  # optional: parity chunks and their signed layout (docs/format.md, section 12)
ROOTS = "roots"  # optional: new trust roots for the site, outside the manifest (docs/trust.md, "Rotation")
MAX_SIGNATURE_FILES = 64
MAX_SIGNATURE_BYTES = 64 * 1024
MAX_ROOT_FILES = 64
MAX_ROOT_FILE_BYTES = 2 * 1024 * 1024
# All the unverified files a bundle carries beside its manifest, together: 64 signatures, 64 roots
# and 64 authorizations at their own caps came to about 390 MiB read before any was checked
# (docs/format.md, "Limits"). A real bundle carries a few kilobytes of them.
MAX_UNVERIFIED_BYTES = 16 * 1024 * 1024
# chunks/ may hold a few names too many (they are reported as extra chunks); listing stops past this.
MAX_CHUNK_ENTRIES = MAX_CHUNKS + 1000


@dataclass(frozen=True)
class RawBundle:
    """The unverified bytes of a bundle's manifest and signature files."""

    root: Path
    manifest_bytes: bytes
    signatures: dict[str, bytes]
    roots: dict[str, bytes] = field(default_factory=dict)  # roots/<N>.root.json, unverified


@dataclass
class Budget:
    """What is left of :data:`MAX_UNVERIFIED_BYTES` for one bundle's unverified files. Each file is
    charged its size before it is read (and refused, naming it, when that is over what is left)."""

    left: int = MAX_UNVERIFIED_BYTES

    def read(self, path: Path, cap: int, *, missing: type[IntegrityError] | type[TrustError] = TrustError) -> bytes:
        """The bytes of ``path`` (at most ``cap``, its own cap), charged to this budget."""
        data = read_bounded(path, cap=min(cap, self.left), refuse=_refusal(missing, own_cap=cap))
        self.left -= len(data)
        return data


def read_raw_bundle(root: Path) -> RawBundle:
    if not root.is_dir():
        raise UsageError(f"bundle directory {str(root)!r} does not exist or is not a directory", subject=str(root))
    manifest = read_capped(root / MANIFEST, MAX_MANIFEST_BYTES, missing=IntegrityError)
    budget = Budget()
    return RawBundle(root=root, manifest_bytes=manifest, signatures=read_signatures(root / SIGNATURES, budget),
                     roots=_read_roots(root / ROOTS, budget))


def read_signatures(folder: Path, budget: Budget, *, within: str | None = None) -> dict[str, bytes]:
    """The signature files in ``folder``: the bundle's ``signatures/``, or, ``within`` a side
    document's folder (``parity``, ``provenance``), that document's. Missing, or a file in its place,
    is refused (exit 4): a document that is there is signed."""
    shown = f"{within}/{SIGNATURES}" if within else SIGNATURES
    try:
        names = list_entries(folder, MAX_SIGNATURE_FILES, shown=shown)
    except FileNotFoundError:
        raise TrustError(f"{within + '/' if within else 'bundle'} has no {SIGNATURES}/ directory", subject=shown) from None
    except NotADirectoryError:
        raise TrustError(f"{shown} is not a directory", subject=shown) from None
    return {name: budget.read(folder / name, MAX_SIGNATURE_BYTES) for name in names}


def _read_roots(folder: Path, budget: Budget) -> dict[str, bytes]:
    """The optional ``roots/`` chain; absent means none. Interpreted only by :mod:`gapship.installer.trust`."""
    try:
        names = list_entries(folder, MAX_ROOT_FILES)
    except FileNotFoundError:
        return {}
    except NotADirectoryError:
        raise TrustError(f"{ROOTS} is not a directory", subject=ROOTS) from None
    return {name: budget.read(folder / name, MAX_ROOT_FILE_BYTES) for name in names}


def list_entries(folder: Path, cap: int, *, error: type[IntegrityError] | type[TrustError] = TrustError,
                 shown: str | None = None) -> list[str]:
    """The sorted names in a bundle folder (``shown`` in messages; default: its name), refused
    (``error``) past ``cap`` entries without listing the rest; a missing folder or a file in its
    place raises FileNotFoundError or NotADirectoryError, permission problems :class:`HostError`."""
    where = shown or folder.name
    try:
        return list_bounded(folder, cap=cap, too_many=lambda n: error(f"{where}/ holds more than the cap of {n} entries",
                                                                      subject=where))
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as e:
        raise HostError(f"cannot list {folder}: {e.strerror}", subject=str(folder)) from None


def unverified_bytes(root: Path) -> int:
    """What ``signatures/`` and ``roots/`` of a bundle hold now, in bytes: the part of the budget
    :func:`read_raw_bundle` spent, for a reader of the rest (the carried authorizations) to start
    from. Sizes are those the entries have now (``lstat``); nothing is read or followed."""
    total = 0
    for name, cap in ((SIGNATURES, MAX_SIGNATURE_FILES), (ROOTS, MAX_ROOT_FILES)):
        try:
            names = list_entries(root / name, cap)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in names:
            try:
                total += (root / name / entry).lstat().st_size
            except OSError:
                continue
    return total


def read_capped(path: Path, cap: int, *, missing: type[IntegrityError] | type[TrustError]) -> bytes:
    """Read a regular file of at most ``cap`` bytes, refusing symlinks and anything larger."""
    return read_bounded(path, cap=cap, refuse=_refusal(missing))


def open_nofollow(path: Path, *, missing: type[IntegrityError] | type[TrustError] = IntegrityError) -> int:
    """Open a regular file for reading; a missing file raises ``missing``, a symlink or special file
    raises the same, permission problems raise :class:`HostError`. For chunks, which are streamed."""
    fd, _ = open_regular(path, refuse=_refusal(missing))
    return fd


def _refusal(missing: type[IntegrityError] | type[TrustError], *, own_cap: int | None = None) -> Callable[[Refusal], Exception]:
    """A bundle's words for a file it cannot use: ``missing`` (integrity or trust, by the file) for
    what the bundle got wrong, :class:`HostError` for what the host cannot do. ``own_cap``: the file's
    own cap, when the cap given to the reader was lowered to what is left of a :class:`Budget`."""
    def refuse(r: Refusal) -> Exception:
        rel = _rel(r.path)
        if r.reason == "too-large" and own_cap is not None and r.cap is not None and r.cap < own_cap \
                and (r.size or 0) <= own_cap:
            return missing(f"{r.path} takes the bundle's unverified files (signatures/, roots/, authorizations/) "
                           f"over their {MAX_UNVERIFIED_BYTES}-byte budget", subject=rel)
        if r.reason == "missing":
            return missing(f"{rel} is missing", subject=rel)
        if r.reason == "symlink":
            return missing(f"{rel} is a symlink; bundles hold regular files only", subject=rel)
        if r.reason == "not-regular":
            return missing(f"{rel} is not a regular file", subject=rel)
        if r.reason == "too-large":
            return missing(f"{r.path.name} is larger than the {r.cap}-byte cap", subject=str(r.path))
        if r.reason == "denied":
            return HostError(f"cannot read {r.path}: permission denied", subject=str(r.path))
        return HostError(f"cannot open {r.path}: {r.strerror}", subject=str(r.path))
    return refuse


def _rel(path: Path) -> str:
    """A short name for messages: ``chunks/00003.bin`` rather than a whole path."""
    return f"{path.parent.name}/{path.name}" if path.parent.name in (CHUNKS, SIGNATURES, ROOTS, PARITY) else path.name


def chunk_path(root: Path, name: str) -> Path:
    return root / CHUNKS / name


def list_chunk_files(root: Path) -> list[str]:
    try:
        return list_entries(root / CHUNKS, MAX_CHUNK_ENTRIES, error=IntegrityError)
    except FileNotFoundError:
        raise IntegrityError(f"bundle has no {CHUNKS}/ directory", subject=CHUNKS) from None
