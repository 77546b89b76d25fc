"""What ``gapship build`` bundles: every model file, the policy and the dependency files, each with
the path it lands at, its size and mode, checked before anything is read (docs/format.md, "Paths").

The model trees are walked once per build (the CLI walks them before freezing dependencies, to fail
fast, and hands the result to :func:`~.build.build`). The result is kept flat, because a bundle may
hold 200,000 files (docs/format.md, "Limits") and the build also holds the manifest of all of them.
"""

from __future__ import annotations

import os
import stat
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..installer.errors import GapshipError, UsageError
from ..installer.formats.manifest import POLICY_PATH, LeftOut, ModelCard, Origin
from ..installer.formats.paths import check_no_collisions, check_relative_path
from .deps.freeze import FrozenDependencies
from .selection import Selection
from .spec import BundleSpec, ModelSource

DEPENDENCIES_COMPONENT = "python"  # the one dependencies component's name; it lands at dependencies/


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file to bundle: ``source`` on this machine, landing at ``path`` in the bundle."""

    source: str
    path: str
    size: int
    mode: int


class SourceGroup:
    """One component's files, in payload order: a list of bundle paths, an array of sizes and a list
    of modes rather than an object per file. A model folder's files are not given a local path each
    either: file ``models/<name>/<rel>`` is ``<folder>/<rel>``, the same text pathlib would give."""

    __slots__ = ("kind", "name", "paths", "sizes", "modes", "origin", "card", "left_out", "_folder", "_cut",
                 "_sources")

    def __init__(self, kind: str, name: str, *, folder: Path | None = None, root: str = "") -> None:
        self.kind = kind
        self.name = name
        self.paths: list[str] = []
        self.sizes = array("q")
        self.modes: list[int] = []  # 0o644 or 0o755: two shared int objects, 8 bytes a file
        self._folder = None if folder is None else str(folder / "_")[:-1]  # "" for ".", "/" for "/"
        self._cut = len(root) + 1  # the length of "models/<name>/"
        self._sources: list[str] = []
        # a model's format v2 members (docs/format.md, 11.2), set by _model
        self.origin: Origin | None = None
        self.card: ModelCard | None = None
        self.left_out: LeftOut | None = None

    def add(self, f: SourceFile) -> None:
        if self._folder is not None and self._folder + f.path[self._cut:] != f.source:
            raise AssertionError(f"{f.source} is not where {self.kind} {self.name} would look for {f.path}")
        self.paths.append(f.path)
        self.sizes.append(f.size)
        self.modes.append(f.mode)
        if self._folder is None:
            self._sources.append(f.source)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[SourceFile]:
        for i, path in enumerate(self.paths):
            source = self._sources[i] if self._folder is None else self._folder + path[self._cut:]
            yield SourceFile(source, path, self.sizes[i], self.modes[i])

    @property
    def size(self) -> int:
        return sum(self.sizes)


Sources = list[SourceGroup]
"""One :class:`SourceGroup` per component, in payload order: what :func:`collect_sources` returns."""


def collect_sources(spec: BundleSpec, dependencies: FrozenDependencies | None = None, *,
                    download: bool = False) -> Sources:
    """The files of every component, each model's sorted by path; refuse unsafe sources. The
    dependencies component keeps its own order (small files first, see :mod:`.deps.freeze`).
    ``download`` (``build --download``): fetch what a Hugging Face source lacks into its cache."""
    groups = [_model(model, download=download) for model in spec.models]
    groups.append(_group("safeguards", "safeguards", [_source_file(spec.safeguards, POLICY_PATH)]))
    return add_dependencies(spec, groups, dependencies) if dependencies is not None else _checked(spec, groups)


def add_dependencies(spec: BundleSpec, sources: Sources, dependencies: FrozenDependencies | None) -> Sources:
    """``sources`` collected without dependencies, plus the dependencies component: the same result as
    :func:`collect_sources` with them, without walking the model trees again."""
    if dependencies is None:
        return sources
    files = [_source_file(path, target) for path, target in dependencies.files]
    return _checked(spec, [*sources, _group("dependencies", DEPENDENCIES_COMPONENT, files)])


def _group(kind: str, name: str, files: list[SourceFile]) -> SourceGroup:
    group = SourceGroup(kind, name)
    for f in files:
        group.add(f)
    return group


def _checked(spec: BundleSpec, groups: Sources) -> Sources:
    try:
        check_no_collisions(path for group in groups for path in group.paths)
    except GapshipError as e:  # the user's source tree, not a hostile bundle: exit 2 like other bad paths
        raise UsageError(f"cannot bundle {spec.path}: {e.message}", subject=e.subject) from None
    return groups


def _model(model: ModelSource, *, download: bool) -> SourceGroup:
    """One model's files, after its selection (bundler/selection.py), with its origin, card and what
    the selection left out."""
    selection = Selection(model.include, model.exclude)
    if model.hf is not None:
        group = _hf_model(model, selection, download=download)
    else:
        assert model.source is not None
        group = _selected(model, _tree(model.name, model.source), selection)
        group.origin = Origin(model.hf_repo) if model.hf_repo is not None else None
    group.card = model.card
    return group


def _selected(model: ModelSource, group: SourceGroup, selection: Selection) -> SourceGroup:
    if selection.everything:
        return group
    cut = len(f"models/{model.name}/")
    kept = SourceGroup("model", model.name)
    left_files = left_bytes = 0
    for f in group:
        if selection.keeps(f.path[cut:]):
            kept.add(f)
        else:
            left_files, left_bytes = left_files + 1, left_bytes + f.size
    if not kept:
        where = model.source if model.source is not None else model.hf_repo
        raise UsageError(f"model {model.name!r}: {selection.describe()} select none of the {len(group)} file(s) of "
                         f"{where}", subject=model.name)
    kept.left_out = LeftOut(left_files, left_bytes)
    return kept


def _hf_model(model: ModelSource, selection: Selection, *, download: bool) -> SourceGroup:
    from .hfsource import load_snapshot  # huggingface_hub comes with it, only for such a model

    assert model.hf is not None
    snapshot = load_snapshot(model.name, model.hf, selection=selection, download=download)
    root = f"models/{model.name}"
    every = SourceGroup("model", model.name)
    for f in snapshot.files:
        every.add(_source_file(f.blob, f"{root}/{f.path}"))
    if not every:
        raise UsageError(f"model {model.name!r}: the snapshot {snapshot.folder} holds no files", subject=model.name)
    group = _selected(model, every, selection)
    group.origin = Origin(snapshot.repo, snapshot.commit)
    return group


def _tree(name: str, source: Path) -> SourceGroup:
    root = f"models/{name}"
    try:
        st = source.lstat()
    except FileNotFoundError:
        raise UsageError(f"model source {source} does not exist", subject=str(source)) from None
    if stat.S_ISREG(st.st_mode):
        return _group("model", name, [_source_file(source, f"{root}/{source.name}")])
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"model source {source} is not a regular file or directory", subject=str(source))
    group = SourceGroup("model", name, folder=source, root=root)
    for f in _walk(source, root):
        group.add(f)
    return group


def _walk(source: Path, root: str) -> list[SourceFile]:
    out = []
    depth = len(source.parts)
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        # Strings, not a Path per file: per directory, the text pathlib gives for Path(dirpath) / name
        # and for its path relative to the source.
        folder = Path(dirpath)
        local = str(folder / "_")[:-1]
        bundled = "/".join((root, *folder.parts[depth:], ""))
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            out.append(_source_file(local + name, bundled + name))
    if not out:
        raise UsageError(f"model source {source} holds no files", subject=str(source))
    # In the order of the paths' UTF-8 bytes. For the valid Unicode that _source_file lets through (no
    # lone surrogates), that is code point order, so the strings sort as they are, without a key each.
    out.sort(key=lambda f: f.path)
    return out


def _source_file(path: str | Path, target: str) -> SourceFile:
    try:
        check_relative_path(target)
    except GapshipError as e:
        raise UsageError(f"cannot bundle {path}: {e.message}", subject=str(path)) from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", subject=str(path)) from None
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{path} is a symlink; bundles carry regular files only", subject=str(path))
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path} is not a regular file", subject=str(path))
    mode = 0o755 if st.st_mode & 0o111 else 0o644
    return SourceFile(source=os.fspath(path), path=target, size=st.st_size, mode=mode)
