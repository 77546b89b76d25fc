"""The anti-rollback floor the prefix itself holds (docs/trust.md, "Anti-rollback").

Every installed version directory keeps the exact signed manifest and signature files it was installed
from (docs/format.md, "Install layout"). So the host state is not the only record of the highest
version installed: :func:`kept_floor` finds the highest version directory under ``PREFIX/<name>/``
whose kept manifest still verifies under the site's trust (:func:`gapship.installer.trust.kept_version`),
and the install checks the higher of that and the state's floor. Deleting or editing
``PREFIX/.gapship/state.json`` then re-opens no rollback as long as the higher version's directory
is there.

Only directories above the state's floor are looked at, highest first, and the first that verifies
ends the search: with an intact state that is none at all, after a lost state one manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

from packaging.version import InvalidVersion, Version

from ..bundle.files import read_raw_bundle
from ..errors import GapshipError
from ..formats.root import Root
from ..trust import VerifiedManifest, counts_for_floor, kept_version

MAX_CANDIDATES = 64  # version directories verified at most per install (each is a manifest read and checked)


def kept_floor(home: Path, verified: VerifiedManifest, *, above: str | None, skip: str | None) -> str | None:
    """The highest version above ``above`` (None: any) of the directories in ``home`` (one bundle
    name's), other than ``skip``, whose kept manifest is this bundle's and verifies; None if none."""
    trust = verified.trust
    if trust is None:
        return None
    name = verified.manifest.name
    for version, path in _candidates(home, name=name, above=above, skip=skip, root=trust.root)[:MAX_CANDIDATES]:
        try:
            found = kept_version(read_raw_bundle(path), trust=trust, name=name)
        except GapshipError:
            continue  # planted, damaged or signed by keys the site no longer trusts: not a floor
        if found == path.name:
            return found
    return None


def _candidates(home: Path, *, name: str, above: str | None, skip: str | None,
                root: Root) -> list[tuple[Version, Path]]:
    floor = Version(above) if above is not None else None
    out: list[tuple[Version, Path]] = []
    try:
        entries = list(os.scandir(home))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or entry.name == skip or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            version = Version(entry.name)
        except InvalidVersion:
            continue  # `current`, or not a version directory
        if floor is not None and version <= floor:
            continue
        if counts_for_floor(name, entry.name, root):
            out.append((version, Path(entry.path)))
    return sorted(out, key=lambda item: item[0], reverse=True)
