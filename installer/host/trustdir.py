"""The files of a trust directory (docs/trust.md, "The trust directory"). Bytes in, bytes out: every
decision about them is made in :mod:`gapship.installer.trust`.

``TRUSTDIR/root.json`` is the current trusted root; ``TRUSTDIR/roots/<N>.root.json`` keeps every version
the directory ever accepted. Without ``root.json`` the directory is in legacy mode: its ``*.pub`` files
are the release keys, any one of which may sign.
"""

from __future__ import annotations

import re
from pathlib import Path

from .atomic import atomic_write, fsync_dir, read_small
from ..formats.root import MAX_ROOT_BYTES
from ..errors import HostError, TrustError, UsageError
from ..crypto.keys import MAX_KEY_FILE_BYTES
from ..kit import list_bounded

ROOT_FILE = "root.json"
HISTORY_DIR = "roots"
MAX_LEGACY_KEYS = 256
MAX_HISTORY = 10_000
_ROOT_NAME_RE = re.compile(r"([1-9][0-9]{0,8})\.root\.json")


def root_file_name(version: int) -> str:
    return f"{version}.root.json"


def parse_root_file_name(name: str) -> int | None:
    match = _ROOT_NAME_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def check_trust_dir(path: Path) -> None:
    if not path.is_dir():
        raise UsageError(f"trust directory {str(path)!r} does not exist", subject=str(path))


def read_anchor(path: Path) -> bytes | None:
    """``root.json``, or None in legacy mode."""
    return read_small(path / ROOT_FILE, MAX_ROOT_BYTES, what="trust root")


def read_history(path: Path) -> dict[int, bytes]:
    """Every ``roots/<N>.root.json`` of a trust directory by version."""
    return read_root_folder(path / HISTORY_DIR)


def read_root_folder(folder: Path) -> dict[int, bytes]:
    """Every ``<N>.root.json`` in ``folder`` by version; other names there are refused."""
    try:  # at most MAX_HISTORY + 1 names: `trust update` lists folders that came across the gap
        names = list_bounded(folder, cap=MAX_HISTORY, too_many=lambda n: TrustError(
            f"{folder} holds over {n} files", subject=str(folder)))
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise HostError(f"cannot list {folder}: {e.strerror}", subject=str(folder)) from None
    out: dict[int, bytes] = {}
    for name in names:
        if name.startswith("."):
            continue  # an interrupted atomic write's temporary file
        version = parse_root_file_name(name)
        if version is None:
            raise TrustError(f"{folder / name} is not a <version>.root.json file", subject=str(folder / name))
        data = read_small(folder / name, MAX_ROOT_BYTES, what="trust root")
        if data is not None:
            out[version] = data
    return out


def read_legacy_keys(path: Path, *, required: bool = True) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of every ``*.pub`` file, sorted by name. ``required=False`` when the
    directory pins sigstore signers instead (docs/sigstore.md)."""
    pubs = sorted(p for p in path.iterdir() if p.name.endswith(".pub"))
    if not pubs and required:
        raise TrustError(f"trust directory {str(path)!r} holds neither root.json nor *.pub keys", subject=str(path))
    if len(pubs) > MAX_LEGACY_KEYS:
        raise TrustError(f"trust directory holds over {MAX_LEGACY_KEYS} keys", subject=str(path))
    out = []
    for pub in pubs:
        data = read_small(pub, MAX_KEY_FILE_BYTES, what="key file")
        if data is not None:
            out.append((pub.name, data))
    return out


def write_root(path: Path, version: int, data: bytes) -> None:
    """Persist an accepted root: first into the history, then as ``root.json``, each atomically.
    A crash between the two leaves ``root.json`` one version behind its history, which the next
    load catches up on (the history file is verified again as the next link of the chain)."""
    folder = path / HISTORY_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HostError(f"cannot create {folder}: {e.strerror}", subject=str(folder)) from None
    atomic_write(folder / root_file_name(version), data)
    atomic_write(path / ROOT_FILE, data)
    fsync_dir(path)
