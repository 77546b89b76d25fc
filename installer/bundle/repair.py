"""``gapship repair``: rebuild lost or damaged chunks from the parity (docs/format.md, section 12;
docs/cli.md, ``repair``).

One pass finds every bad chunk (:func:`.verify.scan_chunks`, data and parity); each group that lost
no more than its m chunks is decoded from k of its good chunks, a stripe at a time (zfec, through
:mod:`.fec`), and every chunk it lost, data or parity, is rebuilt into a temporary file outside
``chunks/`` and ``parity/`` while it is hashed. Only when EVERY rebuilt chunk matches its hash in
the signed manifest (data) or the signed layout (parity) are they fsynced and renamed under their
real names, each by one rename: a wrong rebuild writes nothing, a good chunk is never rewritten, and a
run killed at any point leaves at most a temporary file, which the next run removes first. An
exclusive ``flock`` on the bundle directory keeps two repairs apart.

``out``: leave the bundle as it is (read-only media) and write a whole bundle at ``out`` instead:
the signed files, every good chunk (hard-linked when ``out`` is on the same filesystem, else copied
and hashed again), the rebuilt ones; ``out`` appears by one rename, and only when it is whole.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..crypto.hashing import READ_SIZE, Progress, new_hasher, no_progress
from ..errors import HostError, IntegrityError, UsageError
from ..formats.parity import LAYOUT, PARITY
from ..host.atomic import fsync_dir
from ..host.fs import remove_tree
from ..trust import VerifiedManifest, VerifiedParity
from .fec import codec
from .files import CHUNKS, MANIFEST, ROOTS, SIGNATURES, chunk_path, open_nofollow
from .parity import DATA, Damage, GroupDamage, damage, parity_path, unrepairable_lines
from .verify import ChunkProblem, scan_chunks

WORK = ".gapship-repair"  # temporary files of a repair in place, beside chunks/ (never inside it)
AUTHORIZATIONS = "authorizations"
STRIPE_BUDGET = 32 * 1024 * 1024  # bytes of surviving blocks in memory at once


@dataclass(frozen=True)
class RepairResult:
    bundle: Path
    out: Path
    rebuilt: tuple[str, ...]  # "chunks/00003.bin", "parity/00001.bin"
    unrepairable: tuple[str, ...]  # lost chunks the parity cannot rebuild
    extra: tuple[str, ...]  # files that are not part of the bundle (left alone in place)
    damage: Damage
    lines: tuple[str, ...] = field(default=())

    @property
    def whole(self) -> bool:
        return not self.unrepairable and not (self.extra and self.out == self.bundle)

    def to_dict(self) -> dict[str, object]:
        return {"bundle": str(self.bundle), "out": str(self.out), "whole": self.whole,
                "rebuilt": list(self.rebuilt), "unrepairable": list(self.unrepairable),
                "extra": list(self.extra) if self.out == self.bundle else [],
                "parity": self.damage.to_dict()}


class NotWhole(IntegrityError):
    """A repair that could not make the bundle whole (exit 3): names what is still lost or extra;
    ``--json`` carries the whole :class:`RepairResult` beside the error."""

    def __init__(self, result: RepairResult) -> None:
        missing = list(result.unrepairable) + [f"{e} (not part of the bundle: remove it)" for e in result.extra]
        super().__init__(f"{result.bundle} is not whole after repair: {len(missing)} chunk(s) still bad: "
                         f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""), subject=missing[0])
        self.result = result

    def details(self) -> dict[str, object]:
        return self.result.to_dict()

    def detail_lines(self) -> Iterator[str]:
        yield from (f"rebuilt {n}" for n in self.result.rebuilt)
        yield from self.result.lines


def repair(bundle: Path, verified: VerifiedManifest, parity: VerifiedParity, *, out: Path | None = None,
           progress: Progress = no_progress) -> RepairResult:
    """Rebuild what the parity allows; return what was rebuilt and what still is not whole (the CLI
    exits 3 unless :attr:`RepairResult.whole`). Raises :class:`IntegrityError` when a rebuilt chunk
    does not match its signed hash (nothing is then written), :class:`HostError` when zfec is missing
    or the bundle cannot be written or is being repaired by another process."""
    if out is not None and (out.exists() or out.is_symlink()):
        raise UsageError(f"output {out} already exists; refusing to overwrite it", subject=str(out))
    with _locked(bundle):
        work = _work_dir(bundle if out is None else out.parent, fresh=out is None, name=out.name if out else "")
        try:
            problems = scan_chunks(bundle, verified, parity=parity, progress=progress)
            found = damage(problems, parity.layout)
            rebuilt = _rebuild(bundle, work, verified, parity, found, progress=progress)
            if out is None:
                _move_into_place(bundle, rebuilt)
            elif found.repairable:
                _write_copy(bundle, work, verified, parity, problems)
                _move_into_place(work, rebuilt)
                os.chmod(work, 0o755)
                os.rename(work, out)
                fsync_dir(out.parent)
            else:
                rebuilt = {}  # --out writes a whole bundle or nothing
        except OSError as e:
            raise HostError(f"cannot write {out or bundle}: {e.strerror}", subject=str(out or bundle)) from None
        finally:
            remove_tree(work)
    lost = [p for g in found.groups if not g.repairable for p in _names(g, parity)]
    return RepairResult(bundle=bundle, out=out or bundle, rebuilt=tuple(sorted(rebuilt)), unrepairable=tuple(lost),
                        extra=found.extra, damage=found, lines=tuple(unrepairable_lines(found)))


def _names(g: GroupDamage, parity: VerifiedParity) -> list[str]:
    return [f"{CHUNKS}/{i:05d}.bin" for i in g.data] + [f"{PARITY}/{parity.layout.parity[j].name}" for j in g.parity]


@contextmanager
def _locked(bundle: Path) -> Iterator[None]:
    try:
        fd = os.open(bundle, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise UsageError(f"bundle directory {str(bundle)!r} cannot be opened: {e.strerror}", subject=str(bundle)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise HostError(f"another gapship repair is running on {bundle}", subject=str(bundle)) from None
            raise HostError(f"cannot lock {bundle}: {e.strerror}", subject=str(bundle)) from None
        yield
    finally:
        os.close(fd)


def _work_dir(parent: Path, *, fresh: bool, name: str) -> Path:
    """In place: ``BUNDLE/.gapship-repair``, emptied first (a killed run's temporary files go); with
    ``--out``: a private ``.<name>.partial-*`` beside ``out`` that becomes ``out`` by one rename."""
    try:
        if fresh:
            work = parent / WORK
            remove_tree(work)
            work.mkdir()
            return work
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent))
    except OSError as e:
        raise HostError(f"cannot write into {parent}: {e.strerror}", subject=str(parent)) from None


def _stripe(chunk_size: int, k: int) -> int:
    return max(4096, min(chunk_size, STRIPE_BUDGET // k))


def _rebuild(bundle: Path, work: Path, verified: VerifiedManifest, parity: VerifiedParity, found: Damage, *,
             progress: Progress) -> dict[str, Path]:
    """Each repairable group's lost chunks into ``work``, each checked against its signed hash.
    Returns {"chunks/00003.bin": temporary path}. A mismatch raises before anything is renamed."""
    rebuilt: dict[str, Path] = {}
    for g in found.groups:
        if g.repairable:
            rebuilt.update(_rebuild_group(bundle, work, verified, parity, g, progress=progress))
    return rebuilt


def _rebuild_group(bundle: Path, work: Path, verified: VerifiedManifest, parity: VerifiedParity, g: GroupDamage, *,
                   progress: Progress) -> dict[str, Path]:
    m, layout = verified.manifest, parity.layout
    members = layout.members(g.group)
    rows = layout.parity_of(g.group)
    lost_data = {members.index(i) for i in g.data}
    lost_rows = {rows.index(layout.parity[j]) for j in g.parity}
    # k good blocks: data blocks first (their rows of the matrix are the identity), then parity.
    good = [(b, chunk_path(bundle, m.chunks[i].name)) for b, i in enumerate(members) if b not in lost_data]
    good += [(g.k + r, parity_path(bundle, p.name)) for r, p in enumerate(rows) if r not in lost_rows]
    good = good[:g.k]
    code = codec(g.k, g.m, what="gapship repair")
    targets: list[tuple[str, int, str, int | None, int | None]] = [(f"{CHUNKS}/{m.chunks[members[b]].name}", m.chunks[members[b]].size, m.chunks[members[b]].hash, b, None)
               for b in sorted(lost_data)]
    targets += [(f"{PARITY}/{rows[r].name}", rows[r].size, rows[r].hash, None, r) for r in sorted(lost_rows)]
    stripe = _stripe(m.chunk_size, g.k)
    fds: list[int] = []
    outs: list[BinaryIO] = []
    temps = [work / name.replace("/", "-") for name, *_ in targets]
    try:
        fds += [open_nofollow(path) for _, path in good]
        outs += [open(t, "xb") for t in temps]
        hashers = [new_hasher(m.hash_algorithm) for _ in targets]
        numbers = [b for b, _ in good]
        for offset in range(0, m.chunk_size, stripe):
            length = min(stripe, m.chunk_size - offset)
            blocks = []
            for fd in fds:
                piece = os.pread(fd, length, offset)
                progress(len(piece))
                blocks.append(piece + bytes(length - len(piece)) if len(piece) < length else piece)
            data = code.decode(blocks, numbers)
            parity_rows = code.encode(data) if lost_rows else []
            for (name, size, _, b, r), f, h in zip(targets, outs, hashers):
                piece = data[b] if b is not None else parity_rows[r or 0]
                keep = piece[:max(0, min(length, size - offset))]
                f.write(keep)
                h.update(keep)
        for (name, size, expected, b, _), f, h in zip(targets, outs, hashers):
            if h.hexdigest() != expected:
                where = "manifest" if b is not None else "parity layout"
                raise IntegrityError(f"rebuilt {name} does not match its {m.hash_algorithm} hash in the signed "
                                     f"{where}; nothing was written", subject=name)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
    except OSError as e:
        raise HostError(f"cannot rebuild chunks of group {g.group}: {e.strerror}", subject=str(work)) from None
    finally:
        for f in outs:
            f.close()
        for fd in fds:
            os.close(fd)
    return {name: t for (name, *_), t in zip(targets, temps)}


def _move_into_place(root: Path, rebuilt: dict[str, Path]) -> None:
    """Each rebuilt chunk under its real name by one rename (over a damaged one), then the folders fsynced."""
    try:
        for name, temp in sorted(rebuilt.items()):
            os.replace(temp, root / name)
        for folder in {name.split("/")[0] for name in rebuilt}:
            fsync_dir(root / folder)
    except OSError as e:
        raise HostError(f"cannot write rebuilt chunks into {root}: {e.strerror}", subject=str(root)) from None


def _write_copy(bundle: Path, work: Path, verified: VerifiedManifest, parity: VerifiedParity,
                problems: list[ChunkProblem]) -> None:
    """The bundle's signed files and good chunks into ``work`` (``--out``)."""
    bad = {p.chunk for p in problems}
    try:
        (work / MANIFEST).write_bytes(verified.manifest_bytes)
        (work / SIGNATURES).mkdir()
        for name, data in verified.signature_files.items():
            (work / SIGNATURES / name).write_bytes(data)
        (work / PARITY / SIGNATURES).mkdir(parents=True)
        (work / PARITY / LAYOUT).write_bytes(parity.layout_bytes)
        for name, data in parity.signature_files.items():
            (work / PARITY / SIGNATURES / name).write_bytes(data)
        for folder in (ROOTS, AUTHORIZATIONS):
            if (bundle / folder).is_dir() and not (bundle / folder).is_symlink():
                shutil.copytree(bundle / folder, work / folder, symlinks=True)
        (work / CHUNKS).mkdir()
        m = verified.manifest
        for c in m.chunks:
            if f"{CHUNKS}/{c.name}" not in bad:
                _link_or_copy(chunk_path(bundle, c.name), work / CHUNKS / c.name, c.hash, m.hash_algorithm)
        for p in parity.layout.parity:
            if f"{PARITY}/{p.name}" not in bad:
                _link_or_copy(parity_path(bundle, p.name), work / PARITY / p.name, p.hash, m.hash_algorithm)
    except OSError as e:
        raise HostError(f"cannot write the repaired copy into {work.parent}: {e.strerror}", subject=str(work)) from None


def _link_or_copy(source: Path, target: Path, expected: str, algorithm: str) -> None:
    """A hard link (no second copy of the bytes); across filesystems a copy, hashed as it is written."""
    try:
        os.link(source, target, follow_symlinks=False)
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    fd = open_nofollow(source)
    hasher = new_hasher(algorithm)
    try:
        with open(target, "xb") as f:
            while block := os.read(fd, READ_SIZE):
                hasher.update(block)
                f.write(block)
    finally:
        os.close(fd)
    if hasher.hexdigest() != expected:
        raise IntegrityError(f"{source} changed while it was copied", subject=str(source))


__all__ = ["RepairResult", "repair", "DATA"]
