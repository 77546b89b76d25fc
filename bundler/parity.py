"""Reed-Solomon parity for a bundle's chunks: ``build --parity`` and ``gapship parity`` (docs/format.md,
section 12). One code path for both: :func:`write_parity` reads the chunk files back (from the page
cache, right after a build has written them) a stripe at a time, group by group, and writes
``parity/<NNNNN>.bin``, the signed ``parity/layout.json`` and its signatures. At most
:data:`STRIPE_BUDGET` bytes of data blocks are in memory at once, whatever the bundle's size, and the
payload is never copied on disk. ``manifest.json`` and its digest are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from math import ceil
from pathlib import Path

from ..installer.bundle.fec import MAX_BLOCKS, codec
from ..installer.bundle.verify import bounded_map
from ..installer.bundle.files import CHUNKS, MANIFEST, SIGNATURES, chunk_path, open_nofollow, read_capped
from ..installer.crypto.hashing import Progress, new_hasher, no_progress
from ..installer.crypto.keys import signature_file_name
from ..installer.errors import HostError, IntegrityError, UsageError
from ..installer.formats.manifest import MAX_MANIFEST_BYTES, Manifest
from ..installer.formats.parity import (
    LAYOUT, MAX_PARITY_CHUNKS, PARITY, Group, ParityChunk, ParityLayout, group_sizes, parity_name,
)
from ..installer.host.atomic import atomic_write, fsync_dir
from ..installer.host.fs import remove_tree
from ..installer.trust import manifest_digest
from .keys import SigningKey

# The parity chunks a group gets at most (more when k + m <= 256 forces it, for a tiny share).
# Encoding costs m multiplications per data byte (zfec: about 1.6 GB/s per row per core here), so this
# bounds the build's extra time, measured by benchmarks/parity.py against the 1.25x at 10%
# (at 4 it was about 1.5x); any run of lost consecutive chunks up to the parity's share of the
# bundle stays repairable however large the groups are (interleaving).
GROUP_PARITY = 2
STRIPE_BUDGET = 32 * 1024 * 1024  # bytes of data blocks in memory at once, over all groups being encoded
_PERCENT_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%?\s*")


def parse_percent(text: str) -> Fraction:
    """``10%`` (or ``10``, ``12.5%``) -> 1/10; more than 0 and at most 100 percent."""
    match = _PERCENT_RE.fullmatch(text)
    value = Fraction(match.group(1)) / 100 if match else Fraction(0)
    if not 0 < value <= 1:
        raise UsageError(f"parity {text!r} is not a percentage in (0, 100], such as 10%", subject="--parity")
    return value


def plan(chunks: int, share: Fraction) -> tuple[int, int]:
    """(groups, m) for ``chunks`` data chunks and a parity ``share``: as few groups as the per-group
    parity allows (:data:`GROUP_PARITY`), at least one parity chunk per group, k + m <= 256."""
    k_max = max(1, int(GROUP_PARITY / share))
    while k_max > 1 and k_max + max(1, ceil(k_max * share)) > MAX_BLOCKS:
        k_max -= 1
    groups = ceil(chunks / k_max)
    k0 = ceil(chunks / groups)
    return groups, max(1, ceil(k0 * share))


@dataclass(frozen=True)
class ParityResult:
    layout: ParityLayout
    signers: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        lay = self.layout
        return {"bundle": {"name": lay.name, "version": lay.version}, "manifest_digest": lay.manifest_digest,
                "groups": len(lay.groups), "k_max": max(g.k for g in lay.groups), "m": max(g.m for g in lay.groups),
                "parity_chunks": len(lay.parity), "parity_bytes": len(lay.parity) * lay.chunk_size,
                "signers": list(self.signers)}


def add_parity(bundle: Path, *, share: Fraction, keys: Sequence[SigningKey], progress: Progress = no_progress) -> ParityResult:
    """``gapship parity``: parity for an existing bundle, each chunk checked against the manifest as it
    is read; ``parity/`` appears whole (one rename) or not at all. A bundle that has parity keeps it."""
    data = read_capped(bundle / MANIFEST, MAX_MANIFEST_BYTES, missing=IntegrityError)
    manifest = Manifest.from_bytes(data)
    target = bundle / PARITY
    if target.exists() or target.is_symlink():
        raise UsageError(f"{target} already exists; remove it to compute new parity", subject=str(target))
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{PARITY}.partial-", dir=bundle))
    except OSError as e:
        raise HostError(f"cannot write into {bundle}: {e.strerror}", subject=str(bundle)) from None
    try:
        result = write_parity(bundle, staging, manifest, data, share=share, keys=keys, check=True,
                              progress=progress)
        os.chmod(staging, 0o755)
        os.rename(staging, target)
        fsync_dir(bundle)
    except OSError as e:
        remove_tree(staging)
        raise HostError(f"cannot write {target}: {e.strerror}", subject=str(target)) from None
    except BaseException:
        remove_tree(staging)
        raise
    return result


def write_parity(bundle: Path, out: Path, manifest: Manifest, manifest_bytes: bytes, *, share: Fraction,
                 keys: Sequence[SigningKey], check: bool, progress: Progress = no_progress) -> ParityResult:
    """Encode ``bundle``'s chunks into the empty folder ``out`` (``parity/`` of a staging bundle),
    then write and sign its layout. ``check``: hash each chunk as it is read, and refuse (exit 3) one
    that does not match the manifest (a build that just wrote them skips this)."""
    n = len(manifest.chunks)
    groups, m = plan(n, share)
    if groups * m > MAX_PARITY_CHUNKS:
        raise UsageError(f"{groups * m} parity chunks would be over the cap of {MAX_PARITY_CHUNKS}; lower "
                         f"--parity or raise --chunk-size", subject="--parity")
    ks = group_sizes(n, groups)
    workers = max(1, min(os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gapship-parity") as pool:
        hashes = [_encode_group(bundle, out, manifest, g, groups, ks[g], m, check=check, pool=pool,
                                window=workers + 1, progress=progress) for g in range(groups)]
    parity, first = [], 0
    for g, group_hashes in enumerate(hashes):
        parity += [ParityChunk(name=parity_name(first + j), group=g, index=j, size=manifest.chunk_size, hash=h)
                   for j, h in enumerate(group_hashes)]
        first += m
    layout = ParityLayout(name=manifest.name, version=manifest.version,
                          manifest_digest=manifest_digest(manifest_bytes, manifest.hash_algorithm),
                          hash_algorithm=manifest.hash_algorithm, chunk_size=manifest.chunk_size, chunks=n,
                          groups=tuple(Group(k=k, m=m) for k in ks), parity=tuple(parity))
    layout_bytes = layout.to_bytes()
    atomic_write(out / LAYOUT, layout_bytes)
    (out / SIGNATURES).mkdir(exist_ok=True)
    signers = tuple(write_parity_signature(out, layout_bytes, k) for k in keys)
    return ParityResult(layout=layout, signers=signers)


def write_parity_signature(parity_dir: Path, layout_bytes: bytes, key: SigningKey) -> str:
    """``parity/signatures/<keyid>.<algorithm>.sig`` over the exact layout bytes (as the manifest's)."""
    keyid = key.public.keyid
    atomic_write(parity_dir / SIGNATURES / signature_file_name(keyid, key.algorithm), key.sign(layout_bytes))
    return keyid


def sign_parity(bundle: Path, key: SigningKey, *, manifest_bytes: bytes, algorithm: str) -> bool:
    """``gapship sign``: also sign the bundle's parity layout, when it has one and it is the layout of
    this manifest. True if it did."""
    folder = bundle / PARITY
    if not (folder / LAYOUT).is_file():
        return False
    from ..installer.formats.parity import MAX_LAYOUT_BYTES

    layout_bytes = read_capped(folder / LAYOUT, MAX_LAYOUT_BYTES, missing=IntegrityError)
    layout = ParityLayout.from_bytes(layout_bytes)  # never sign what a site would refuse to read
    if layout.manifest_digest != manifest_digest(manifest_bytes, algorithm):
        raise IntegrityError(f"{PARITY}/{LAYOUT} is the parity of another manifest ({layout.manifest_digest}); "
                             f"refusing to sign it", subject=f"{PARITY}/{LAYOUT}")
    try:
        (folder / SIGNATURES).mkdir(exist_ok=True)
    except OSError as e:
        raise HostError(f"cannot write a signature into {folder}: {e.strerror}", subject=str(folder)) from None
    write_parity_signature(folder, layout_bytes, key)
    return True


def _stripe(chunk_size: int, k: int, window: int) -> int:
    """Bytes per block per stripe: ``window`` stripes of ``k`` blocks in memory at once, together at
    most :data:`STRIPE_BUDGET` (32 MiB / k for one stripe at a time); whole pages, for madvise."""
    return max(mmap.PAGESIZE, min(chunk_size, STRIPE_BUDGET // window // k) // mmap.PAGESIZE * mmap.PAGESIZE)


def _encode_group(bundle: Path, out: Path, manifest: Manifest, group: int, groups: int, k: int, m: int, *,
                  check: bool, pool: Executor, window: int, progress: Progress) -> list[str]:
    """Write group ``group``'s m parity chunks and return their hashes. Data chunk i is block
    i // groups of group i mod groups. Stripes are read and encoded on the pool's threads (pread and
    zfec release the GIL), at most ``window`` at a time, and written and hashed here, in order."""
    members = range(group, len(manifest.chunks), groups)
    code = codec(k, m, what="computing parity")
    stripe = _stripe(manifest.chunk_size, k, window)
    names = [out / parity_name(group * m + j) for j in range(m)]  # every group has the same m
    fds: list[int] = []
    outs = []
    maps: list[mmap.mmap | None] = []
    try:
        fds += [open_nofollow(chunk_path(bundle, manifest.chunks[i].name)) for i in members]
        outs += [open(p, "xb") for p in names]
        out_hashes = [new_hasher(manifest.hash_algorithm) for _ in range(m)]
        in_hashes = [new_hasher(manifest.hash_algorithm) for _ in members] if check else []

        # A build reads its own fresh chunks through mmap: zfec then reads the page cache in place (a
        # pread copy of every byte cost as much as the encoding). An existing bundle is read with
        # pread: a chunk truncated under an mmap would kill the process with SIGBUS, not refuse it.
        maps = [] if check else [mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
                                 for fd, size in ((fd, os.fstat(fd).st_size) for fd in fds)]

        def read(b: int, fd: int, length: int, offset: int) -> bytes | memoryview:
            if check:
                return os.pread(fd, length, offset)
            view = maps[b]
            return memoryview(view)[offset:offset + length] if view is not None else b""

        def one(offset: int) -> tuple[list[bytes | memoryview], list[bytes]]:
            length = min(stripe, manifest.chunk_size - offset)
            pieces = [read(b, fd, length, offset) for b, fd in enumerate(fds)]
            blocks = [bytes(p) + bytes(length - len(p)) if len(p) < length else p for p in pieces]
            return pieces, code.encode(blocks)

        offsets = range(0, manifest.chunk_size, stripe)
        for offset, (pieces, parity) in zip(offsets, bounded_map(pool, one, offsets, window=window)):
            for b, piece in enumerate(pieces):
                if check:
                    in_hashes[b].update(piece)
                progress(len(piece))
            for j, block in enumerate(parity):
                outs[j].write(block)
                out_hashes[j].update(block)
            _release(maps, offset, stripe)
        if check:
            _check_read(bundle, manifest, members, in_hashes, fds)
        for f in outs:
            f.flush()
            os.fsync(f.fileno())
        return [h.hexdigest() for h in out_hashes]
    finally:
        for f in outs:
            f.close()
        pieces, parity = [], []  # the last stripe's views of the maps
        for view in maps:
            if view is not None:
                with contextlib.suppress(BufferError):  # a view still held by a traceback: closed when collected
                    view.close()
        for fd in fds:
            os.close(fd)


def _release(maps: list[mmap.mmap | None], offset: int, length: int) -> None:
    """Unmap a stripe once encoded (MADV_DONTNEED; the page cache keeps it): mapped pages count as the
    process's RSS, which must stay under 200 MB at any size."""
    for view in maps:
        if view is not None and offset < len(view):
            view.madvise(mmap.MADV_DONTNEED, offset, min(length, len(view) - offset))


def _check_read(bundle: Path, manifest: Manifest, members: range, hashes: list[hashlib._Hash], fds: list[int]) -> None:
    for i, hasher, fd in zip(members, hashes, fds):
        chunk = manifest.chunks[i]
        size = os.fstat(fd).st_size
        if size != chunk.size or hasher.hexdigest() != chunk.hash:
            raise IntegrityError(f"{CHUNKS}/{chunk.name} does not match the manifest; parity is computed from "
                                 f"a whole bundle only (gapship verify names what is wrong)",
                                 subject=f"{CHUNKS}/{chunk.name}")
