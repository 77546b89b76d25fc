"""``gapship repair``: rebuild lost or damaged chunks from the parity (docs/format.md, section 12;
docs/cli.md, ``repair``).

One pass over each group reads every chunk once, a stripe at a time: each is hashed (the check
``verify`` makes) and, when the group lost no more than its m chunks, k of them are decoded at the
same time (zfec, through :mod:`.fec`), so that every chunk it lost, data or parity, is rebuilt into a
temporary file outside ``chunks/`` and ``parity/`` while it is hashed. A chunk that turns out damaged
(not missing) sends its group through once more without it. Only when EVERY rebuilt chunk matches its hash in
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
from concurrent.futures import Executor, ThreadPoolExecutor
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
from .parity import DATA, PARITY_KIND, Damage, GroupDamage, damage, parity_path, unrepairable_lines
from .verify import DAMAGED, MISSING, NOT_REGULAR, OVERSIZED, TRUNCATED, ChunkProblem, bounded_map, chunk_name_problems

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
            names = chunk_name_problems(bundle, verified.manifest, parity.layout)
            workers = max(1, min(os.cpu_count() or 1, 4))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gapship-repair") as pool:
                problems, rebuilt = _repair_pass(bundle, work, verified, parity, names, pool=pool, window=workers + 1,
                                                 progress=progress)
            found = damage(problems, parity.layout)
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


def _stripe(chunk_size: int, k: int, window: int) -> int:
    return max(4096, min(chunk_size, STRIPE_BUDGET // window // k))


@dataclass
class _Block:
    """One block of a group's code: a data chunk (``index`` in the manifest) or a parity chunk
    (``index`` in the layout), where it is, and what the signed documents say it is."""

    number: int  # block number in the group's code: 0..k-1 data, k.. parity
    kind: str
    index: int
    subject: str  # "chunks/00003.bin"
    path: Path
    size: int
    hash: str


def _blocks(bundle: Path, verified: VerifiedManifest, parity: VerifiedParity, group: int) -> list[_Block]:
    m, layout = verified.manifest, parity.layout
    out = [_Block(b, DATA, i, f"{CHUNKS}/{m.chunks[i].name}", chunk_path(bundle, m.chunks[i].name), m.chunks[i].size,
                  m.chunks[i].hash) for b, i in enumerate(layout.members(group))]
    first = sum(g.m for g in layout.groups[:group])
    k = layout.groups[group].k
    out += [_Block(k + r, PARITY_KIND, first + r, f"{PARITY}/{p.name}", parity_path(bundle, p.name), p.size, p.hash)
            for r, p in enumerate(layout.parity_of(group))]
    return out


def _repair_pass(bundle: Path, work: Path, verified: VerifiedManifest, parity: VerifiedParity,
                 names: list[ChunkProblem], *, pool: Executor, window: int,
                 progress: Progress) -> tuple[list[ChunkProblem], dict[str, Path]]:
    """Every group once: its chunks read a stripe at a time, each hashed (the check ``verify``
    makes) and, when the group lost any, decoded at the same time, so that each surviving chunk is
    read once. A chunk found bad in the pass makes the group go again without it, when its parity
    still allows (rare: it means a damaged, not a missing, chunk). Returns every problem (those of
    ``names`` first) and the rebuilt chunks, each already checked against its signed hash."""
    missing = {(p.kind, p.index) for p in names if p.problem == MISSING}
    problems, rebuilt = list(names), {}
    for group, spec in enumerate(parity.layout.groups):
        blocks = _blocks(bundle, verified, parity, group)
        lost = {b.number for b in blocks if (b.kind, b.index) in missing}
        while True:
            bad, temps = _group_pass(work, verified, parity, blocks, lost, spec.k, spec.m, pool=pool, window=window,
                                     progress=progress)
            new = [p for p in bad if p.index is not None and _number(blocks, p) not in lost]
            if not new:
                break
            lost |= {_number(blocks, p) for p in new}
            problems += new
        rebuilt.update(temps)
    return problems, rebuilt


def _number(blocks: list[_Block], p: ChunkProblem) -> int:
    return next(b.number for b in blocks if (b.kind, b.index) == (p.kind, p.index))


def _group_pass(work: Path, verified: VerifiedManifest, parity: VerifiedParity, blocks: list[_Block], lost: set[int],
                k: int, m: int, *, pool: Executor, window: int, progress: Progress) -> tuple[list[ChunkProblem], dict[str, Path]]:
    """One pass over a group: the problems of its present chunks, and (when it lost at most m) its lost
    chunks rebuilt into ``work``. A rebuilt chunk that does not match its signed hash raises."""
    algorithm = verified.manifest.hash_algorithm
    chunk_size = verified.manifest.chunk_size
    group = parity.layout.group_of(blocks[0].index)
    present = [b for b in blocks if b.number not in lost]
    targets = [b for b in blocks if b.number in lost] if len(lost) <= m else []
    use = present[:k] if targets else []
    problems: list[ChunkProblem] = []
    fds: dict[int, int] = {}
    outs: list[BinaryIO] = []
    temps = [work / t.subject.replace("/", "-") for t in targets]
    done = False
    try:
        for b in present:
            try:
                fds[b.number] = open_nofollow(b.path)
            except IntegrityError as e:  # a symlink, a folder, a FIFO...
                problems.append(ChunkProblem(b.subject, NOT_REGULAR, index=b.index, expected_size=b.size,
                                             expected_hash=b.hash, detail=e.message, kind=b.kind, group=group))
        if problems:
            return problems, {}
        outs += [open(t, "xb") for t in temps]
        code = codec(k, m, what="gapship repair") if targets else None
        hashers = {b.number: new_hasher(algorithm) for b in present}
        seen = dict.fromkeys(hashers, 0)
        out_hashers = [new_hasher(algorithm) for _ in targets]
        stripe = _stripe(chunk_size, k, window)

        def one(offset: int) -> tuple[dict[int, bytes], list[bytes]]:
            length = min(stripe, chunk_size - offset)
            pieces = {b.number: os.pread(fds[b.number], max(0, min(length, b.size - offset)), offset) for b in present}
            if code is None:
                return pieces, []
            data = code.decode([pieces[b.number].ljust(length, b"\0") for b in use], [b.number for b in use])
            rows = code.encode(data) if any(t.kind == PARITY_KIND for t in targets) else []
            return pieces, [data[t.number] if t.number < k else rows[t.number - k] for t in targets]

        for offset, (pieces, rebuilt) in zip(range(0, chunk_size, stripe),
                                             bounded_map(pool, one, range(0, chunk_size, stripe), window=window)):
            for number, piece in pieces.items():
                hashers[number].update(piece)
                seen[number] += len(piece)
                progress(len(piece))
            for t, f, h, piece in zip(targets, outs, out_hashers, rebuilt):
                keep = piece[:max(0, min(len(piece), t.size - offset))]
                f.write(keep)
                h.update(keep)
        for b in present:
            problem = _block_problem(b, fds[b.number], hashers[b.number].hexdigest(), seen[b.number], algorithm, group)
            if problem is not None:
                problems.append(problem)
        if problems:
            return problems, {}  # decoded from a bad block, perhaps: the caller goes again without it
        for t, f, h in zip(targets, outs, out_hashers):
            if h.hexdigest() != t.hash:
                where = "manifest" if t.kind == DATA else "parity layout"
                raise IntegrityError(f"rebuilt {t.subject} does not match its {algorithm} hash in the signed "
                                     f"{where}; nothing was written", subject=t.subject)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        done = True
        return problems, {t.subject: path for t, path in zip(targets, temps)}
    except OSError as e:
        raise HostError(f"cannot repair group {group}: {e.strerror}", subject=str(work)) from None
    finally:
        for f in outs:
            f.close()
        for fd in fds.values():
            os.close(fd)
        if not done:  # nothing of a failed or abandoned pass stays behind
            for temp in temps:
                temp.unlink(missing_ok=True)


def _block_problem(b: _Block, fd: int, digest: str, seen: int, algorithm: str, group: int) -> ChunkProblem | None:
    size = os.fstat(fd).st_size
    if seen < b.size:
        kind = TRUNCATED
    elif size > b.size:
        kind = OVERSIZED
    elif digest != b.hash:
        kind = DAMAGED
    else:
        return None
    return ChunkProblem(b.subject, kind, index=b.index, expected_size=b.size, size=max(seen, size) if kind != TRUNCATED else seen,
                        expected_hash=b.hash, hash=digest if kind == DAMAGED else None, algorithm=algorithm,
                        kind=b.kind, group=group)


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
