"""Pushing a bundle directory to a registry, pulling it back, and opening an artifact as a bundle
whose chunks stream from the registry (docs/oci.md).

The registry is not trusted. A pull or an install reads the artifact's small files first (each blob
checked against its digest and capped before it is read), hands them to the same bounded readers and
the same trust decision as a bundle directory (:func:`~gapship.installer.trust.verify_manifest`), and
only then fetches chunks: by the digest the *signed* manifest gives (for a sha256 bundle a chunk's
hash is its OCI digest), never more than its signed size plus one byte, and checked against its
signed hash before any of its bytes count.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..bundle.files import CHUNKS, MANIFEST, MAX_UNVERIFIED_BYTES, list_entries, open_nofollow, read_raw_bundle
from ..bundle.source import attached
from ..bundle.verify import ChunkReport, bounded_map, chunk_fd_problem
from ..crypto.hashing import Progress, no_progress
from ..errors import GapshipError, IntegrityError, UsageError
from ..formats.manifest import MAX_MANIFEST_BYTES, Chunk, Manifest
from ..formats.parity import PARITY
from ..provenance import MAX_STATEMENT_BYTES, PROVENANCE, STATEMENT
from ..trust import TrustStore, VerifiedManifest, parse_unverified, verify_manifest
from .artifact import (CHUNK_TYPE, EMPTY_DATA, EMPTY_DIGEST, Artifact, Layer, build_manifest, media_type_for,
                       parse_artifact, safe_path)
from .client import FdSink, RegistryClient
from .reference import Reference

T = TypeVar("T")
DEFAULT_JOBS = 4
# The chunks fetched ahead of the one the install reads, at most this many bytes in all (and at least
# two chunks): enough to keep --jobs connections busy, bounded whatever the chunk size.
MAX_PREFETCH_BYTES = 256 * 1024 * 1024
_SIDE_FOLDERS = ("signatures", "roots", "authorizations", PARITY, PROVENANCE)
MAX_SIDE_FILES = 64 * 3 + 64 * 65 + 50_000 + 1000  # signatures, roots, authorizations, parity


# -- push -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    reference: str
    digest: str
    blobs: int
    uploaded: int
    bytes_uploaded: int

    def to_dict(self) -> dict[str, object]:
        return {"reference": self.reference, "digest": self.digest, "blobs": self.blobs,
                "blobs_uploaded": self.uploaded, "blobs_skipped": self.blobs - self.uploaded,
                "bytes_uploaded": self.bytes_uploaded}


@dataclass(frozen=True)
class _Blob:
    path: str  # in the bundle
    size: int
    digest: str
    index: int | None


def push(bundle: Path, ref: Reference, client: RegistryClient, *, jobs: int = DEFAULT_JOBS,
         progress: Progress = no_progress) -> PushResult:
    """Upload what the registry lacks of ``bundle``, then its OCI manifest under ``ref``. Nothing is
    verified here (run ``gapship verify`` first); the registry checks each blob's digest, and every
    reader checks everything against the signed manifest."""
    m = parse_unverified(read_raw_bundle(bundle))
    blobs = _bundle_blobs(bundle, m)
    layers = [Layer(media_type_for(b.path), b.digest, b.size, b.path, b.index) for b in blobs]
    manifest = build_manifest(layers, name=m.name, version=m.version)
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    if ref.digest and ref.digest != digest:
        raise UsageError(f"{ref} names digest {ref.digest}, but this bundle's artifact is {digest}", subject=str(ref))
    uploaded = [0, 0]
    lock = threading.Lock()

    def one(blob: _Blob | None) -> None:
        if blob is None:  # the empty config
            if not client.has_blob(EMPTY_DIGEST):
                _upload_bytes(client, EMPTY_DIGEST, EMPTY_DATA, what="config")
            return
        if client.has_blob(blob.digest):
            progress(blob.size)
            return
        client.upload_blob(blob.digest, blob.size, lambda: open_nofollow(bundle / blob.path), what=blob.path)
        progress(blob.size)
        with lock:
            uploaded[0] += 1
            uploaded[1] += blob.size

    _run_parallel(one, [None, *blobs], jobs=jobs)
    client.put_manifest(ref.reference if not ref.digest else digest, manifest)
    return PushResult(reference=str(ref), digest=digest, blobs=len(blobs), uploaded=uploaded[0],
                      bytes_uploaded=uploaded[1])


def _upload_bytes(client: RegistryClient, digest: str, data: bytes, *, what: str) -> None:
    def opener() -> int:
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        return r

    client.upload_blob(digest, len(data), opener, what=what)


def _bundle_blobs(bundle: Path, m: Manifest) -> list[_Blob]:
    """Every file of the bundle directory as a blob: the small files, then the chunks in order. A
    chunk of a sha256 bundle has its hash as its digest; other files are hashed here."""
    blobs = [_hashed(bundle, path) for path in [MANIFEST, *_side_files(bundle)]]
    for i, c in enumerate(m.chunks):
        path = f"{CHUNKS}/{c.name}"
        size = _size(bundle / path)
        if size != c.size:
            raise IntegrityError(f"{path} is {size} bytes, the manifest declares {c.size}: run gapship verify",
                                 subject=path)
        digest = f"sha256:{c.hash}" if m.hash_algorithm == "sha256" else _hashed(bundle, path).digest
        blobs.append(_Blob(path, size, digest, i))
    return blobs


def _side_files(bundle: Path) -> list[str]:
    """The files under signatures/, roots/, authorizations/, parity/ and provenance/, sorted, regular files only."""
    out: list[str] = []

    def walk(rel: str, depth: int) -> None:
        try:
            names = list_entries(bundle / rel, MAX_SIDE_FILES, error=IntegrityError, shown=rel)
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            path = f"{rel}/{name}"
            mode = os.lstat(bundle / path).st_mode
            if stat.S_ISDIR(mode) and depth > 0:
                walk(path, depth - 1)
            elif stat.S_ISREG(mode) and safe_path(path):
                out.append(path)
            else:
                raise IntegrityError(f"{path} is not a file a bundle can carry (a link, a device or a hidden or "
                                     "too deep path)", subject=path)
    for folder in _SIDE_FOLDERS:
        walk(folder, 2)
    return out


def _size(path: Path) -> int:
    fd = open_nofollow(path)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _hashed(bundle: Path, path: str) -> _Blob:
    fd = open_nofollow(bundle / path)
    try:
        h = hashlib.sha256()
        size = 0
        while block := os.read(fd, 1024 * 1024):
            h.update(block)
            size += len(block)
    finally:
        os.close(fd)
    return _Blob(path, size, "sha256:" + h.hexdigest(), None)


def _run_parallel(fn: Callable[[T], None], items: Sequence[T], *, jobs: int, name: str = "gapship-oci") -> None:
    """``fn`` over ``items``, ``jobs`` at a time with a bounded window; the first error stops the rest
    (queued calls are cancelled, running ones finish) and is raised."""
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix=name) as pool:
        try:
            for _ in bounded_map(pool, fn, items, window=4 * max(1, jobs)):
                pass
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# -- reading an artifact ----------------------------------------------------------------------------


def resolve(client: RegistryClient) -> Artifact:
    """The artifact ``client.ref`` names: its OCI manifest, parsed (not trusted: it only says where things are)."""
    data, digest = client.get_manifest(client.ref.reference)
    return parse_artifact(data, digest=digest, where=f"{client.ref} (artifact {digest[:19]})")


def fetch_small_files(client: RegistryClient, artifact: Artifact, out: Path, *, parity: bool) -> None:
    """Write the artifact's manifest.json, signatures/, roots/, authorizations/ and provenance/ (and, with
    ``parity``, parity/'s layout and signatures) under ``out``, each blob checked against its digest,
    and capped by its size before a byte is fetched: the bounded readers check them again."""
    budget = MAX_UNVERIFIED_BYTES
    layers = artifact.by_path()
    if MANIFEST not in layers:
        raise IntegrityError(f"{client.ref} has no {MANIFEST} layer: not a gapship bundle", subject=MANIFEST)
    for path, layer in sorted(layers.items()):
        if layer.media_type == CHUNK_TYPE or (path.startswith(f"{PARITY}/") and
                                              (not parity or _is_parity_chunk(path))):
            continue
        own = {MANIFEST: MAX_MANIFEST_BYTES, f"{PROVENANCE}/{STATEMENT}": MAX_STATEMENT_BYTES}  # caps of their own
        cap = own.get(path, budget)
        if layer.size > cap:
            raise IntegrityError(f"{path} in {client.ref} is {layer.size} bytes, over the {cap}-byte cap", subject=path)
        if path not in own:
            budget -= layer.size
        _fetch_to(client, layer, out / path, what=path)


def _is_parity_chunk(path: str) -> bool:
    return path.count("/") == 1 and path.endswith(".bin")


def _fetch_to(client: RegistryClient, layer: Layer, target: Path, *, what: str, check_digest: bool = True) -> None:
    """Fetch ``layer`` into ``target`` by way of a ``.part`` file, renamed into place when whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        client.get_blob(layer.digest, FdSink(fd), size=layer.size, what=what, check_digest=check_digest)
    except BaseException:
        os.close(fd)
        part.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(part, target)


def chunk_layers(artifact: Artifact, m: Manifest, *, where: str) -> list[Layer]:
    """The artifact's layer for each chunk of the signed manifest, in order; refused (exit 3) when the
    artifact lacks one, holds extra ones, or disagrees with the signed size or (sha256) hash."""
    by_index = artifact.chunks()
    extra = sorted(set(by_index) - set(range(len(m.chunks))))
    if extra:
        raise IntegrityError(f"{where} has a chunk layer {by_index[extra[0]].path} (index {extra[0]}) that is not "
                             "part of this bundle (extra chunk)", subject=by_index[extra[0]].path)
    out = []
    for i, c in enumerate(m.chunks):
        subject = f"{CHUNKS}/{c.name}"
        layer = by_index.get(i)
        if layer is None:
            raise IntegrityError(f"{subject} is missing from {where}", subject=subject)
        if layer.size != c.size or layer.path != subject or (
                m.hash_algorithm == "sha256" and layer.digest != f"sha256:{c.hash}"):
            raise IntegrityError(f"{subject}: the artifact's layer ({layer.digest}, {layer.size} bytes) is not the "
                                 f"chunk the signed manifest declares", subject=subject)
        out.append(layer)
    return out


class RegistrySource:
    """A :class:`~gapship.installer.bundle.source.ChunkSource` over an artifact's chunk layers, read
    ahead on ``jobs`` threads (each with its own keep-alive connection), at most
    :data:`MAX_PREFETCH_BYTES` ahead. Each chunk lands in an anonymous memory file, at most its signed
    size plus one byte; the reader checks it against the signed hash (``check_digest`` also checks the
    OCI digest as it arrives, for callers that do not hash it themselves).

    The memory files are reused, a ring of ``window + 1``: a chunk's file takes a later chunk once the
    reader has asked for the next one (it reads chunks in order, each whole). Writing into pages a file
    already has costs a copy; a fresh file costs a page allocation and zeroing as well, which on the
    benchmark was a third of the client's system time (docs/oci.md, "Throughput")."""

    def __init__(self, client: RegistryClient, layers: list[Layer], *, jobs: int, check_digest: bool) -> None:
        self.client, self.layers, self.check_digest = client, layers, check_digest
        biggest = max((layer.size for layer in layers), default=1) or 1
        self.window = max(2, min(2 * max(1, jobs), MAX_PREFETCH_BYTES // biggest))
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, self.window)), thread_name_prefix="gapship-pull")
        self.pending: dict[int, Future[int]] = {}
        self.lent: dict[int, int] = {}  # chunk index -> the memory file it is in, while the reader has it
        self.free: list[int] = []
        self.lock = threading.Lock()

    def check_names(self, manifest: Manifest) -> None:
        return None  # chunk_layers() already matched the layers with the signed chunk list

    def open_chunk(self, index: int, chunk: Chunk) -> int:
        with self.lock:  # the chunks before this one have been read whole: their files take new chunks
            for done in [i for i in self.lent if i < index]:
                self.free.append(self.lent.pop(done))
        self._schedule(index)
        fd = self.pending.pop(index).result()
        self.lent[index] = fd
        os.lseek(fd, 0, os.SEEK_SET)
        return os.dup(fd)  # the reader closes its own descriptor; the file stays in the ring

    def start(self) -> None:
        """Begin fetching the first chunks now, while the installer still plans (dependencies, staging)."""
        self._schedule(0)

    def _schedule(self, index: int) -> None:
        for ahead in range(index, min(len(self.layers), index + self.window)):
            if ahead not in self.pending and ahead not in self.lent:
                self.pending[ahead] = self.pool.submit(self._fetch, ahead)

    def _fetch(self, index: int) -> int:
        layer = self.layers[index]
        with self.lock:
            fd = self.free.pop() if self.free else os.memfd_create("gapship-chunk", os.MFD_CLOEXEC)  # Linux
        try:
            self.client.get_blob(layer.digest, _RingSink(fd), size=layer.size, what=layer.path,
                                 check_digest=self.check_digest)
            os.ftruncate(fd, layer.size)  # a file that held a longer chunk before
        except BaseException:
            with self.lock:
                self.free.append(fd)
            raise
        return fd

    def read_range(self, index: int, chunk: Chunk, offset: int, length: int) -> bytes:
        layer = self.layers[index]
        return self.client.get_range(layer.digest, offset, length, size=layer.size, what=layer.path)

    def close(self) -> None:
        for future in self.pending.values():
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        fds = [*self.free, *self.lent.values()]
        fds += [f.result() for f in self.pending.values() if f.done() and not f.cancelled() and f.exception() is None]
        for fd in fds:
            os.close(fd)
        self.pending.clear()
        self.lent.clear()
        self.free.clear()


class _RingSink(FdSink):
    """Into a reused memory file from offset 0, keeping its pages on a retry (no truncation)."""

    def reset(self) -> None:
        self.pos = 0


@contextmanager
def registry_bundle(client: RegistryClient, *, jobs: int = DEFAULT_JOBS, check_digest: bool = False) -> Iterator[Path]:
    """The artifact ``client.ref`` names as a bundle directory for the installer's readers: its small
    files in a private temporary directory, its chunks streamed from the registry (attached with
    :func:`~gapship.installer.bundle.source.attached`). Removed when the block ends."""
    artifact = resolve(client)
    with tempfile.TemporaryDirectory(prefix="gapship-oci-") as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir(mode=0o700)
        fetch_small_files(client, artifact, root, parity=False)
        source = _LazySource(client, artifact, jobs=jobs, check_digest=check_digest)
        try:
            with attached(root, source):
                yield root
        finally:
            source.close()
            client.close()


class _LazySource:
    """Matches the chunk layers with the signed manifest when the installer first asks for chunks
    (it has verified the manifest by then), then reads them through a :class:`RegistrySource`."""

    def __init__(self, client: RegistryClient, artifact: Artifact, *, jobs: int, check_digest: bool) -> None:
        self.client, self.artifact, self.jobs, self.check_digest = client, artifact, jobs, check_digest
        self.inner: RegistrySource | None = None

    def check_names(self, manifest: Manifest) -> None:
        self._source(manifest).start()  # install calls this first, once the manifest is verified

    def _source(self, manifest: Manifest) -> RegistrySource:
        if self.inner is None:
            layers = chunk_layers(self.artifact, manifest, where=str(self.client.ref))
            self.inner = RegistrySource(self.client, layers, jobs=self.jobs, check_digest=self.check_digest)
        return self.inner

    def open_chunk(self, index: int, chunk: Chunk) -> int:
        if self.inner is None:
            raise RuntimeError("chunks asked for before the chunk list was checked")
        return self.inner.open_chunk(index, chunk)

    def read_range(self, index: int, chunk: Chunk, offset: int, length: int) -> bytes:
        """A few bytes of one chunk (the site policy, the dependency lock), which the caller checks
        against the file's signed hash: asked for before the chunk list is matched (site decision)."""
        subject = f"{CHUNKS}/{chunk.name}"
        layer = self.artifact.chunks().get(index)
        if layer is None or layer.size != chunk.size:
            raise IntegrityError(f"{subject} is missing from {self.client.ref} or has another size", subject=subject)
        return self.client.get_range(layer.digest, offset, length, size=layer.size, what=subject)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def verify_registry_chunks(bundle: Path, verified: VerifiedManifest, *, progress: Progress = no_progress) -> ChunkReport:
    """``verify oci://``: every chunk, streamed from the registry, against its signed size and hash.
    Like the directory's verify, one pass names every chunk whose bytes are wrong (ChunkProblems:
    exit 3, ``problems`` in ``--json``), so that a pipeline pushes them again at once; a chunk the
    registry cannot serve at all (no such blob, a drip, other bytes for a digest) stops it there."""
    from ..bundle.source import source_for
    from ..bundle.verify import ChunkProblems

    m = verified.manifest
    src = source_for(bundle)
    src.check_names(m)
    size = 0
    problems = []
    for i, c in enumerate(m.chunks):
        fd = src.open_chunk(i, c)
        try:
            problem = chunk_fd_problem(fd, c, m.hash_algorithm, subject=f"{CHUNKS}/{c.name}", index=i,
                                       progress=progress)
        finally:
            os.close(fd)
        if problem is not None:
            problems.append(problem)
        size += c.size
    if problems:
        raise ChunkProblems(problems)
    return ChunkReport(chunks=len(m.chunks), bytes=size)


# -- pull -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullResult:
    digest: str
    verified: VerifiedManifest
    chunks: int
    fetched: int
    kept: int
    bytes_fetched: int

    def to_dict(self) -> dict[str, object]:
        m = self.verified.manifest
        return {"digest": self.digest, "bundle": {"name": m.name, "version": m.version},
                "manifest_digest": self.verified.digest, "signers": list(self.verified.signers),
                "chunks": self.chunks, "chunks_fetched": self.fetched, "chunks_kept": self.kept,
                "bytes_fetched": self.bytes_fetched}


def pull(client: RegistryClient, out: Path, *, trust: TrustStore, jobs: int = DEFAULT_JOBS,
         progress: Progress = no_progress) -> PullResult:
    """Write the artifact as a bundle directory ``out``: small files first, the manifest verified
    against ``trust``, then every chunk (and parity chunk) that is missing or bad, each checked
    against the signed manifest before it is renamed into place. A rerun keeps the good chunks."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a directory", subject=str(out))
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise UsageError(f"--out {str(out)!r} is not empty and holds no bundle to resume", subject=str(out))
    artifact = resolve(client)
    out.mkdir(parents=True, exist_ok=True)
    fetch_small_files(client, artifact, out, parity=True)
    verified = verify_manifest(read_raw_bundle(out), trust=trust)
    m = verified.manifest
    work = [(layer, c) for layer, c in zip(chunk_layers(artifact, m, where=str(client.ref)), m.chunks)]
    work += _parity_work(out, verified, artifact, where=str(client.ref))
    (out / CHUNKS).mkdir(exist_ok=True)
    counts = [0, 0]
    lock = threading.Lock()

    def one(item: tuple[Layer, Chunk]) -> None:
        layer, c = item
        target = out / layer.path
        if _good(target, c, m.hash_algorithm):
            progress(c.size)
            return
        _fetch_to(client, layer, target, what=layer.path, check_digest=True)
        if m.hash_algorithm != "sha256" or layer.index is None:
            if not _good(target, c, m.hash_algorithm):
                target.unlink(missing_ok=True)
                raise IntegrityError(f"{layer.path} does not match its {m.hash_algorithm} hash in the signed "
                                     "manifest", subject=layer.path)
        progress(c.size)
        with lock:
            counts[0] += 1
            counts[1] += c.size

    try:
        _run_parallel(one, work, jobs=jobs, name="gapship-pull")
    finally:
        client.close()
    return PullResult(digest=artifact.digest, verified=verified, chunks=len(work), fetched=counts[0],
                      kept=len(work) - counts[0], bytes_fetched=counts[1])


def _parity_work(out: Path, verified: VerifiedManifest, artifact: Artifact, *, where: str) -> list[tuple[Layer, Chunk]]:
    """The parity chunks the signed layout lists, as (layer, chunk-like) pairs; none without parity/."""
    from ..bundle.parity import load_parity

    parity = load_parity(out, verified) if (out / PARITY).is_dir() else None
    if parity is None:
        return []
    layers = artifact.by_path()
    work = []
    for p in parity.layout.parity:
        path = f"{PARITY}/{p.name}"
        layer = layers.get(path)
        if layer is None or layer.size != p.size:
            raise IntegrityError(f"{path} is missing from {where} or has another size", subject=path)
        work.append((layer, Chunk(name=p.name, size=p.size, hash=p.hash)))
    return work


def _good(path: Path, c: Chunk, algorithm: str) -> bool:
    """Whether ``path`` already holds chunk ``c`` (a resumed pull keeps it)."""
    try:
        fd = open_nofollow(path)
    except GapshipError:
        return False
    try:
        return chunk_fd_problem(fd, c, algorithm, subject=path.name) is None
    finally:
        os.close(fd)


