"""Reading the files of a bundle directory (docs/format.md, "Layout"), with hard caps.

Nothing here interprets what it reads: it returns bytes for :mod:`gapship.installer.trust` to verify, and opens chunk
files without following symlinks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HostError, IntegrityError, TrustError, UsageError
from ..formats.manifest import MAX_MANIFEST_BYTES
from ..kit import Refusal, open_regular, read_bounded

MANIFEST = "manifest.json"
SIGNATURES = "signatures"
CHUNKS = "chunks"
ROOTS = "roots"  # optional: new trust roots for the site, outside the manifest (docs/trust.md, "Rotation")
MAX_SIGNATURE_FILES = 64
MAX_SIGNATURE_BYTES = 64 * 1024
MAX_ROOT_FILES = 64
MAX_ROOT_FILE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class RawBundle:
    """The unverified bytes of a bundle's manifest and signature files."""

    root: Path
    manifest_bytes: bytes
    signatures: dict[str, bytes]
    roots: dict[str, bytes] = field(default_factory=dict)  # roots/<N>.root.json, unverified


def read_raw_bundle(root: Path) -> RawBundle:
    if not root.is_dir():
        raise UsageError(f"bundle directory {str(root)!r} does not exist or is not a directory", subject=str(root))
    manifest = read_capped(root / MANIFEST, MAX_MANIFEST_BYTES, missing=IntegrityError)
    return RawBundle(root=root, manifest_bytes=manifest, signatures=_read_signatures(root / SIGNATURES),
                     roots=_read_roots(root / ROOTS))


def _read_signatures(folder: Path) -> dict[str, bytes]:
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        raise TrustError(f"bundle has no {SIGNATURES}/ directory", subject=SIGNATURES) from None
    except NotADirectoryError:
        raise TrustError(f"{SIGNATURES} is not a directory", subject=SIGNATURES) from None
    if len(names) > MAX_SIGNATURE_FILES:
        raise TrustError(f"{SIGNATURES}/ holds {len(names)} files, over the cap of {MAX_SIGNATURE_FILES}", subject=SIGNATURES)
    return {name: read_capped(folder / name, MAX_SIGNATURE_BYTES, missing=TrustError) for name in names}


def _read_roots(folder: Path) -> dict[str, bytes]:
    """The optional ``roots/`` chain; absent means none. Interpreted only by :mod:`gapship.installer.trust`."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return {}
    except NotADirectoryError:
        raise TrustError(f"{ROOTS} is not a directory", subject=ROOTS) from None
    if len(names) > MAX_ROOT_FILES:
        raise TrustError(f"{ROOTS}/ holds {len(names)} files, over the cap of {MAX_ROOT_FILES}", subject=ROOTS)
    return {name: read_capped(folder / name, MAX_ROOT_FILE_BYTES, missing=TrustError) for name in names}


def read_capped(path: Path, cap: int, *, missing: type[IntegrityError] | type[TrustError]) -> bytes:
    """Read a regular file of at most ``cap`` bytes, refusing symlinks and anything larger."""
    return read_bounded(path, cap=cap, refuse=_refusal(missing))


def open_nofollow(path: Path, *, missing: type[IntegrityError] | type[TrustError] = IntegrityError) -> int:
    """Open a regular file for reading; a missing file raises ``missing``, a symlink or special file
    raises the same, permission problems raise :class:`HostError`. For chunks, which are streamed."""
    fd, _ = open_regular(path, refuse=_refusal(missing))
    return fd


def _refusal(missing: type[IntegrityError] | type[TrustError]) -> Callable[[Refusal], Exception]:
    """A bundle's words for a file it cannot use: ``missing`` (integrity or trust, by the file) for
    what the bundle got wrong, :class:`HostError` for what the host cannot do."""
    def refuse(r: Refusal) -> Exception:
        rel = _rel(r.path)
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
    return f"{path.parent.name}/{path.name}" if path.parent.name in (CHUNKS, SIGNATURES, ROOTS) else path.name


def chunk_path(root: Path, name: str) -> Path:
    return root / CHUNKS / name


def list_chunk_files(root: Path) -> list[str]:
    try:
        return sorted(os.listdir(root / CHUNKS))
    except FileNotFoundError:
        raise IntegrityError(f"bundle has no {CHUNKS}/ directory", subject=CHUNKS) from None
