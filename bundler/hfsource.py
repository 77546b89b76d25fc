"""A model read from a local Hugging Face cache (docs/huggingface.md): ``hf_repo`` at ``revision``,
through huggingface_hub's own cache API, and fetched into that cache with ``build --download``.

The cache's layout (huggingface_hub's ``file_download``): ``<cache>/models--<org>--<name>/`` holds
``refs/<branch or tag>`` (a file with the commit), ``snapshots/<commit>/<path>`` (a symlink per file)
and ``blobs/<etag>`` (the bytes). A snapshot's symlinks are followed here, and only here, when they
land on a regular file in that repo's own ``blobs/``; any other link is refused, since it could
carry a file from elsewhere on the build host into a signed bundle. A snapshot file that is a
regular file (a cache made where symlinks are not available) is taken as it is.

huggingface_hub (the ``gapship[hf]`` extra) is imported only when a spec names such a model.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..installer.errors import GapshipError, HostError, UsageError
from ..installer.formats.manifest import COMMIT_RE
from .selection import Selection
from .spec import HfSource

EXTRA = "gapship[hf]"


@dataclass(frozen=True)
class SnapshotFile:
    path: str  # relative to the snapshot, '/'-separated
    blob: str  # the regular file that holds its bytes
    size: int


@dataclass(frozen=True)
class Snapshot:
    repo: str
    commit: str
    folder: Path  # <cache>/models--org--name/snapshots/<commit>
    files: tuple[SnapshotFile, ...]  # sorted by path


def cache_root(cache_dir: Path | None) -> Path:
    """The cache a model is read from: the spec's ``cache_dir``, else ``HF_HUB_CACHE``, else
    ``HF_HOME``/hub, else huggingface_hub's default (``$XDG_CACHE_HOME`` or ~/.cache, /huggingface/hub).
    Read from the environment at the call, not at import, as the library itself does only at import."""
    if cache_dir is not None:
        return cache_dir
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def repo_folder(repo: str) -> str:
    """``org/name`` -> ``models--org--name`` (huggingface_hub's ``repo_folder_name``)."""
    return "models--" + repo.replace("/", "--")


def load_snapshot(model: str, source: HfSource, *, selection: Selection, download: bool = False) -> Snapshot:
    """The files of ``source`` in the cache, resolved to its commit; with ``download``, first fetch
    what the selection needs (``snapshot_download`` with the same patterns). Raises
    :class:`UsageError` (exit 2) naming the revision when it is not in the cache."""
    hub = _hub(model)
    cache = cache_root(source.cache_dir)
    if download:
        folder = Path(_download(hub, model, source, cache, selection))
        commit = folder.name
    else:
        commit = _cached_commit(hub, model, source, cache)
    repo_dir = cache / repo_folder(source.repo)
    snapshot = repo_dir / "snapshots" / commit
    return Snapshot(source.repo, commit, snapshot, tuple(_walk(model, snapshot, repo_dir / "blobs")))


def _hub(model: str) -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise HostError(f"model {model!r} is read from a Hugging Face cache: install {EXTRA}",
                        subject="huggingface_hub") from None
    return huggingface_hub


def _cached_commit(hub: Any, model: str, source: HfSource, cache: Path) -> str:
    """The commit ``source.revision`` names in the cache, through ``scan_cache_dir``."""
    missing = (f"model {model!r}: revision {source.revision!r} of {source.repo} is not in the Hugging Face cache "
               f"{cache}; run gapship build --download to fetch it")
    try:
        info = hub.scan_cache_dir(cache)
    except hub.CacheNotFound:
        raise UsageError(missing, subject=source.revision) from None
    except (OSError, ValueError) as e:
        raise HostError(f"cannot read the Hugging Face cache {cache}: {e}", subject=str(cache)) from None
    folder = os.sep + repo_folder(source.repo)
    for warning in info.warnings:  # a repo huggingface_hub could not read (a broken link, say)
        text = str(warning)
        if folder + os.sep in text or text.endswith(folder) or folder + ":" in text:
            raise UsageError(f"model {model!r}: the cache of {source.repo} is damaged: {warning}",
                             subject=source.repo)
    for repo in info.repos:
        if repo.repo_type == "model" and repo.repo_id == source.repo:
            for rev in repo.revisions:
                if rev.commit_hash == source.revision or source.revision in rev.refs:
                    return str(rev.commit_hash)
    raise UsageError(missing, subject=source.revision)


def _download(hub: Any, model: str, source: HfSource, cache: Path, selection: Selection) -> str:
    include = None if selection.include is None else list(selection.include)
    try:
        folder = hub.snapshot_download(source.repo, revision=source.revision, cache_dir=cache,
                                       allow_patterns=include, ignore_patterns=list(selection.exclude) or None)
    except GapshipError:
        raise
    except Exception as e:  # the library's errors (network, unknown repo or revision): one line, exit 2
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"model {model!r}: cannot download {source.repo} at {source.revision!r}: {detail}",
                         subject=source.repo) from None
    if not COMMIT_RE.fullmatch(Path(folder).name):
        raise UsageError(f"model {model!r}: snapshot_download gave {folder}, not a snapshot of a commit",
                         subject=source.repo)
    return str(folder)


def _walk(model: str, snapshot: Path, blobs: Path) -> list[SnapshotFile]:
    blobs_real = os.path.realpath(blobs)
    out = []
    for dirpath, dirnames, filenames in os.walk(snapshot):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, snapshot)
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
            blob = _blob(model, path, blobs_real)
            out.append(SnapshotFile(rel, blob, os.stat(blob).st_size))
    out.sort(key=lambda f: f.path)
    return out


def _blob(model: str, path: str, blobs_real: str) -> str:
    """The regular file behind one snapshot entry: itself, or its link's target in ``blobs/``."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        return path
    if not stat.S_ISLNK(st.st_mode):
        raise UsageError(f"model {model!r}: {path} is not a regular file or a link into the cache's blobs/",
                         subject=path)
    target = os.path.realpath(path)
    if os.path.dirname(target) != blobs_real:
        raise UsageError(f"model {model!r}: {path} is a symlink to {os.readlink(path)!r}, which leaves its repo's "
                         "blobs/ in the Hugging Face cache; refusing to bundle it", subject=path)
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):
            raise UsageError(f"model {model!r}: {path} links to {target}, not a regular file", subject=path)
    except FileNotFoundError:
        raise UsageError(f"model {model!r}: {path} links to {target}, which does not exist (a damaged cache; "
                         "gapship build --download fetches it again)", subject=path) from None
    return target
