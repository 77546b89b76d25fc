"""Publishing the active version's models into a Hugging Face cache (docs/huggingface.md), so that
serving stacks find them by repo id with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE=DIR``.

The layout is huggingface_hub's (``file_download.py``), written here by our own small code, so the
trusted base does not need huggingface_hub::

    DIR/
        models--org--name -> .gapship-hf/<bundle>/<token>/models--org--name     (one symlink per repo)
        .gapship-hf/<bundle>/<token>/
            published.json                       what this tree is: bundle, version, model, repo, commit
            models--org--name/
                refs/main                        the commit, no newline (as huggingface_hub writes it)
                snapshots/<commit>/<path>        a symlink per file, to PREFIX/<bundle>/<version>/models/<model>/<path>
                blobs/                           empty: the bytes are the installed, read-only files

A tree is built complete under a fresh ``<token>`` and then put into view by renaming a new symlink
over ``DIR/models--org--name``, so a reader sees the old tree or the new one, never a mix: the same
switch as ``current`` (docs/format.md, 8.2). The old tree goes afterwards. A repo id is published by one
bundle at a time: an entry of DIR that is a real directory (a download of the hub's own) or a link to
another bundle's tree is never replaced.

What is published is read from the version ``current`` names, through its kept ``manifest.json`` (the
exact signed bytes the install verified, in a prefix checked like ssh's StrictModes), so install,
rollback, ``prune`` and ``remove`` all end with the same :func:`publish`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import GapshipError, HostError
from ..formats.manifest import MAX_MANIFEST_BYTES, Component, Manifest
from ..kit import Refusal, canonical_json, list_bounded, read_bounded
from .atomic import atomic_write, fsync_dir
from .fs import remove_tree
from .strict import check_ancestors, check_dir, make_dirs

TREES = ".gapship-hf"
RECORD = "published.json"
REF = "main"  # the ref a bare snapshot_download(repo_id) reads
MAX_TREES = 4096  # per bundle: one per model, and a few left over by a killed run


@dataclass(frozen=True)
class Entry:
    """One model as it is published: its repo id, the commit its snapshot is named after, and its files."""

    model: str
    repo: str
    commit: str
    files: tuple[str, ...]  # relative to the model's folder

    @property
    def folder(self) -> str:
        return repo_folder(self.repo)


@dataclass(frozen=True)
class Published:
    hf_cache: Path
    bundle: str
    version: str | None
    entries: tuple[Entry, ...]
    removed: tuple[str, ...]  # repo ids this bundle no longer publishes

    def to_dict(self) -> dict[str, object]:
        return {"dir": str(self.hf_cache), "version": self.version,
                "repos": [{"repo": e.repo, "model": e.model, "commit": e.commit, "files": len(e.files),
                           "path": str(self.hf_cache / e.folder)} for e in self.entries],
                "removed": list(self.removed)}


def repo_folder(repo: str) -> str:
    """``org/name`` -> ``models--org--name`` (huggingface_hub's ``repo_folder_name``)."""
    return "models--" + repo.replace("/", "--")


def entries_of(manifest: Manifest, *, manifest_bytes: bytes, installed: Callable[[str], bool]) -> tuple[Entry, ...]:
    """The models of ``manifest`` that are ``installed`` (a site may leave some out), each under its
    ``origin.hf_repo`` or, without one, ``<bundle>/<model>``; its snapshot is named after
    ``origin.revision`` or, without one, a commit-like id derived from the manifest and the model."""
    out = []
    for comp in manifest.components:
        if comp.kind != "model" or not installed(comp.name):
            continue
        repo = comp.origin.hf_repo if comp.origin is not None else f"{manifest.name}/{comp.name}"
        out.append(Entry(comp.name, repo, _commit(comp, manifest_bytes), _files(comp)))
    _check_distinct(out)
    return tuple(out)


def _commit(comp: Component, manifest_bytes: bytes) -> str:
    if comp.origin is not None and comp.origin.revision is not None:
        return comp.origin.revision
    # 40 hex digits, as a git commit: stable for this manifest and model, new with every new version
    return hashlib.sha256(b"gapship-hf\0" + hashlib.sha256(manifest_bytes).digest() + comp.name.encode()).hexdigest()[:40]


def _files(comp: Component) -> tuple[str, ...]:
    cut = len(f"models/{comp.name}/")
    return tuple(f.path[cut:] for f in comp.files)


def _check_distinct(entries: Iterable[Entry]) -> None:
    seen: dict[str, str] = {}
    for e in entries:
        key = e.folder.lower()  # huggingface_hub's folders on a case-insensitive disk are one
        if key in seen:
            raise HostError(f"models {seen[key]!r} and {e.model!r} would both publish {e.repo} into the Hugging "
                            "Face cache", subject=e.repo)
        seen[key] = e.model


def check_cache_dir(hf_cache: Path) -> None:
    """Refuse a ``--hf-cache`` directory that is a symlink, not a directory, or that another user could
    write to or rename (the prefix's StrictModes rules: docs/site-admin.md); a missing one is made 0755."""
    check_ancestors(hf_cache)
    if not check_dir(hf_cache, what="Hugging Face cache"):
        make_dirs(hf_cache)
        check_dir(hf_cache, what="Hugging Face cache")


def check_publishable(hf_cache: Path, *, bundle: str, entries: Iterable[Entry]) -> None:
    """Before an install: refuse when a repo id it would publish is taken in ``hf_cache`` by something
    else (a real directory, a file, another bundle's tree), so that nothing is installed that then
    cannot be published."""
    check_cache_dir(hf_cache)
    entries = tuple(entries)
    _check_distinct(entries)
    for e in entries:
        _owner_check(hf_cache, e, bundle=bundle)


def _owner_check(hf_cache: Path, e: Entry, *, bundle: str) -> None:
    link = hf_cache / e.folder
    try:
        st = os.lstat(link)
    except FileNotFoundError:
        return
    if not stat.S_ISLNK(st.st_mode):
        raise HostError(f"{link} is already in the Hugging Face cache and was not published by gapship; refusing "
                        f"to replace it with {bundle}'s model {e.model!r} (move it away first)", subject=str(link))
    owner = _owner_of(os.readlink(link))
    if owner != bundle:
        raise HostError(f"{e.repo} is already published in {hf_cache} by "
                        + (f"bundle {owner!r}" if owner else f"a link to {os.readlink(link)!r}")
                        + f"; bundle {bundle!r} cannot publish its model {e.model!r} under the same repo id",
                        subject=e.repo)


def _owner_of(target: str) -> str | None:
    """The bundle whose tree a repo link points at (``.gapship-hf/<bundle>/<token>/<folder>``), or None."""
    parts = target.split("/")
    return parts[1] if len(parts) == 4 and parts[0] == TREES else None


def publish(hf_cache: Path, *, home: Path, bundle: str) -> Published:
    """Make ``hf_cache`` hold exactly the models of ``home``'s current version that this bundle
    publishes (none when there is no current version), each switched into view atomically."""
    check_cache_dir(hf_cache)
    version = _current(home)
    entries: tuple[Entry, ...] = ()
    version_dir = None
    if version is not None:
        version_dir = Path(os.path.abspath(home / version))
        data = _kept_manifest(version_dir)
        models = version_dir / "models"
        entries = entries_of(_parse(data, version_dir), manifest_bytes=data,
                             installed=lambda name: (models / name).is_dir())
    for e in entries:
        _owner_check(hf_cache, e, bundle=bundle)
    trees = hf_cache / TREES / bundle
    make_dirs(trees)
    keep: set[str] = set()
    for e in entries:
        assert version_dir is not None and version is not None
        keep.add(_switch(hf_cache, trees, e, bundle=bundle, version=version, version_dir=version_dir))
    removed = _drop_others(hf_cache, trees, bundle=bundle, keep=keep, published={e.folder for e in entries})
    return Published(hf_cache, bundle, version, entries, removed)


def _current(home: Path) -> str | None:
    link = home / "current"
    try:
        return os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostError(f"cannot read {link}: {e.strerror}", subject=str(link)) from None


def _kept_manifest(version_dir: Path) -> bytes:
    def refuse(r: Refusal) -> Exception:
        return HostError(f"cannot publish {version_dir}: its manifest.json {r.strerror}", subject=str(r.path))

    return read_bounded(version_dir / "manifest.json", cap=MAX_MANIFEST_BYTES, refuse=refuse)


def _parse(data: bytes, version_dir: Path) -> Manifest:
    try:
        return Manifest.from_bytes(data)
    except GapshipError as e:  # the host's own copy of a manifest that verified: damaged on this disk
        raise HostError(f"cannot publish {version_dir}: its manifest.json: {e.message}",
                        subject=str(version_dir)) from None


def _switch(hf_cache: Path, trees: Path, e: Entry, *, bundle: str, version: str, version_dir: Path) -> str:
    """Build ``e``'s tree under a new token, then rename a link to it over ``DIR/<folder>``. Returns
    the token. An identical tree already in view is kept as it is."""
    link = hf_cache / e.folder
    record = canonical_json({"bundle": bundle, "version": version, "version_dir": str(version_dir),
                             "model": e.model, "repo": e.repo, "commit": e.commit, "files": list(e.files)})
    current = _linked_token(link, bundle)
    if current is not None and _read_record(trees / current) == record:
        return current
    token = secrets.token_hex(6)
    tree = trees / token
    try:
        _build_tree(tree, e, version_dir=version_dir, record=record)
        tmp = hf_cache / f".{e.folder}.{token}"
        os.symlink(f"{TREES}/{bundle}/{token}/{e.folder}", tmp)
        os.replace(tmp, link)
        fsync_dir(hf_cache)
    except OSError as err:
        remove_tree(tree)
        raise HostError(f"cannot publish {e.repo} in {hf_cache}: {err.strerror}", subject=str(link)) from None
    if current is not None:
        remove_tree(trees / current)
    return token


def _build_tree(tree: Path, e: Entry, *, version_dir: Path, record: bytes) -> None:
    repo = tree / e.folder
    snapshot = repo / "snapshots" / e.commit
    for folder in (repo / "refs", repo / "blobs", snapshot):
        make_dirs(folder)
    models = version_dir / "models" / e.model
    for rel in e.files:
        target = snapshot / rel
        make_dirs(target.parent)
        os.symlink(models / rel, target)
    atomic_write(repo / "refs" / REF, e.commit.encode())
    atomic_write(tree / RECORD, record)
    fsync_dir(tree)


def _linked_token(link: Path, bundle: str) -> str | None:
    try:
        target = os.readlink(link)
    except OSError:
        return None
    return target.split("/")[2] if _owner_of(target) == bundle else None


def _read_record(tree: Path) -> bytes | None:
    try:
        return read_bounded(tree / RECORD, cap=MAX_MANIFEST_BYTES, refuse=lambda r: OSError(r.strerror))
    except OSError:
        return None


def _drop_others(hf_cache: Path, trees: Path, *, bundle: str, keep: set[str], published: set[str]) -> tuple[str, ...]:
    """Remove this bundle's links to trees not kept (repos its current version no longer has), then
    every tree of this bundle not kept (old versions, or litter of a killed run)."""
    removed = []
    for name in _listing(hf_cache):
        link = hf_cache / name
        if name.startswith("models--") and name not in published and os.path.islink(link):
            token = _linked_token(link, bundle)
            if token is not None and token not in keep:
                removed.append(_repo_of(trees / token) or name)
                link.unlink()
        elif name.startswith(".models--") and os.path.islink(link) and _owner_of(os.readlink(link)) == bundle:
            link.unlink()  # a link made by a killed run, never renamed into view
    for token in _listing(trees):
        if token not in keep:
            remove_tree(trees / token)
    fsync_dir(hf_cache)
    return tuple(sorted(removed))


def _repo_of(tree: Path) -> str | None:
    data = _read_record(tree)
    try:
        repo = json.loads(data)["repo"] if data else None
    except (ValueError, KeyError, TypeError):
        return None
    return repo if isinstance(repo, str) else None


def _listing(folder: Path) -> list[str]:
    def too_many(cap: int) -> Exception:
        return HostError(f"{folder} holds over {cap} entries; refusing to publish into it", subject=str(folder))

    try:
        return list_bounded(folder, cap=MAX_TREES * 16, too_many=too_many)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise HostError(f"cannot list {folder}: {e.strerror}", subject=str(folder)) from None
