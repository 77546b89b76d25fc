"""``gapship build``: freeze a spec into a signed, chunked bundle (docs/format.md)."""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from ..installer.bundle import CHUNKS, MANIFEST, SIGNATURES
from ..installer._fs import remove_tree
from ..installer.errors import GapshipError, HostError, UsageError
from ..installer.hashing import Progress, new_hasher, no_progress
from ..installer.manifest import (
    MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, POLICY_PATH, Component, FileEntry, Manifest,
)
from ..installer.paths import check_no_collisions, check_relative_path
from ..installer.policy import parse_policy
from ._expiry import parse_expires
from ._payload import PayloadWriter
from .deps import FrozenDependencies, frozen_dependencies
from .keys import SigningKey
from .sign import write_signature
from .spec import BundleSpec

DEFAULT_CHUNK_SIZE = 64 * 1024**2
DEPENDENCIES_COMPONENT = "python"  # the one dependencies component's name; it lands at dependencies/
# The unit group matches exactly the keys of _UNITS ("Mi" without "B" is not one of them).
_SIZE_RE = re.compile(r"\s*(\d+)\s*(b|[kmgt](?:i?b)?)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str) -> int:
    """``64MiB`` -> 67108864, ``4GB`` -> 4000000000, ``512`` -> 512 (KB/MB/GB are decimal)."""
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise UsageError(f"size {text!r} is not a number with an optional unit such as MiB or GB", subject=text)
    value = int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if not MIN_CHUNK_SIZE <= value <= MAX_CHUNK_SIZE:
        raise UsageError(f"chunk size {text} is outside {MIN_CHUNK_SIZE} bytes..16 GiB", subject=text)
    return value


@dataclass(frozen=True)
class SourceFile:
    source: Path
    path: str  # where it lands in the bundle
    size: int
    mode: int


@dataclass(frozen=True)
class BuildResult:
    out: Path
    manifest: Manifest
    signer: str
    signers: tuple[str, ...] = ()  # every key id that signed, the first being ``signer``

    def to_dict(self) -> dict[str, object]:
        m = self.manifest
        return {
            "out": str(self.out),
            "bundle": {"name": m.name, "version": m.version},
            "chunks": len(m.chunks),
            "files": m.file_count,
            "payload_size": m.payload_size,
            "signer": self.signer,
            "signers": list(self.signers or (self.signer,)),
            "hash_algorithm": m.hash_algorithm,
            "expires": m.expires,
        }


def build(spec: BundleSpec, *, out: Path, key: SigningKey, chunk_size: int = DEFAULT_CHUNK_SIZE,
          algorithm: str = "sha256", progress: Progress = no_progress, now: datetime | None = None,
          expires: str | None = None, also_sign: Sequence[SigningKey] = (),
          dependencies: FrozenDependencies | None = None, offline: bool = False,
          include_gapship: bool = False) -> BuildResult:
    """Write a complete, signed bundle to ``out`` (which must not exist yet), or nothing at all.

    ``expires`` is a duration after the creation time (``90d``) or an absolute time (docs/trust.md);
    ``also_sign`` adds more signers, e.g. the ML-DSA-87 half of a hybrid pair. ``dependencies`` are
    frozen ones (see :func:`~.deps.frozen_dependencies`); when not given and the spec has
    ``[dependencies]``, they are frozen here, with ``offline`` and ``include_gapship``."""
    check_output_free(out)
    keys = _distinct_keys([key, *also_sign])
    policy_bytes = _read_policy(spec)
    with _dependencies(spec, dependencies, out, offline=offline, include_gapship=include_gapship) as deps:
        return _build(spec, out=out, keys=keys, chunk_size=chunk_size, algorithm=algorithm, progress=progress,
                      now=now, expires=expires, policy_bytes=policy_bytes, deps=deps)


def check_output_free(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise UsageError(f"output {out} already exists; refusing to overwrite it", subject=str(out))


@contextmanager
def _dependencies(spec: BundleSpec, given: FrozenDependencies | None, out: Path, *, offline: bool,
                  include_gapship: bool) -> Iterator[FrozenDependencies | None]:
    if given is not None:
        yield given
        return
    with frozen_dependencies(spec.dependencies, offline=offline, include_gapship=include_gapship,
                             work_dir=out.parent) as frozen:
        yield frozen


def _build(spec: BundleSpec, *, out: Path, keys: list[SigningKey], chunk_size: int, algorithm: str,
           progress: Progress, now: datetime | None, expires: str | None, policy_bytes: bytes,
           deps: FrozenDependencies | None) -> BuildResult:
    groups = collect_sources(spec, deps)
    created = _created(now).replace(microsecond=0)
    until = parse_expires(expires, start=created) if expires is not None else None
    staging = _staging_dir(out)
    try:
        manifest = _write_payload(staging, spec, groups, chunk_size, algorithm, created, progress)
        if until is not None:
            manifest = replace(manifest, expires=until.strftime("%Y-%m-%dT%H:%M:%SZ"))
        _check_policy_unchanged(manifest, policy_bytes, spec)
        (staging / MANIFEST).write_bytes(manifest.to_bytes())
        (staging / SIGNATURES).mkdir()
        keyids = tuple(write_signature(staging, manifest.to_bytes(), k) for k in keys)
        os.chmod(staging, 0o755)  # mkdtemp made it 0700; a transfer pipeline may run as another user
        os.rename(staging, out)
    except OSError as e:
        remove_tree(staging)
        raise HostError(f"cannot write bundle {out}: {e.strerror}", subject=str(out)) from None
    except BaseException:
        remove_tree(staging)
        raise
    return BuildResult(out=out, manifest=manifest, signer=keyids[0], signers=keyids)


def _distinct_keys(keys: list[SigningKey]) -> list[SigningKey]:
    seen: set[str] = set()
    for k in keys:
        if k.public.keyid in seen:
            raise UsageError(f"key {k.public.keyid[:16]} is given twice", subject=k.public.keyid)
        seen.add(k.public.keyid)
    return keys


def _read_policy(spec: BundleSpec) -> bytes:
    try:
        data = spec.safeguards.read_bytes()
    except OSError as e:
        raise UsageError(f"safeguards policy {spec.safeguards}: {e.strerror}", subject=str(spec.safeguards)) from None
    policy = parse_policy(data, source=str(spec.safeguards))
    policy.check_models({m.name for m in spec.models})
    return data


def _check_policy_unchanged(manifest: Manifest, policy: bytes, spec: BundleSpec) -> None:
    """The policy was validated from the bytes read first; the payload must carry exactly those."""
    hasher = new_hasher(manifest.hash_algorithm)
    hasher.update(policy)
    bundled = next(f for f in manifest.files() if f.path == POLICY_PATH)
    if bundled.hash != hasher.hexdigest():
        raise UsageError(f"{spec.safeguards} changed while the bundle was being built", subject=str(spec.safeguards))


def collect_sources(spec: BundleSpec, dependencies: FrozenDependencies | None = None
                    ) -> list[tuple[str, str, list[SourceFile]]]:
    """(kind, name, files) per component, each model's file list sorted by path; refuse unsafe sources.
    The dependencies component keeps its own order (small files first, see :mod:`.deps`)."""
    groups: list[tuple[str, str, list[SourceFile]]] = []
    for model in spec.models:
        groups.append(("model", model.name, _walk(model.source, f"models/{model.name}")))
    policy = _source_file(spec.safeguards, POLICY_PATH)
    groups.append(("safeguards", "safeguards", [policy]))
    if dependencies is not None:
        groups.append(("dependencies", DEPENDENCIES_COMPONENT,
                       [_source_file(path, target) for path, target in dependencies.files]))
    try:
        check_no_collisions(f.path for _, _, files in groups for f in files)
    except GapshipError as e:  # the user's source tree, not a hostile bundle: exit 2 like other bad paths
        raise UsageError(f"cannot bundle {spec.path}: {e.message}", subject=e.subject) from None
    return groups


def _walk(source: Path, root: str) -> list[SourceFile]:
    try:
        st = source.lstat()
    except FileNotFoundError:
        raise UsageError(f"model source {source} does not exist", subject=str(source)) from None
    if stat.S_ISREG(st.st_mode):
        return [_source_file(source, f"{root}/{source.name}")]
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"model source {source} is not a regular file or directory", subject=str(source))
    out = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            full = Path(dirpath) / name
            rel = full.relative_to(source).as_posix()
            out.append(_source_file(full, f"{root}/{rel}"))
    if not out:
        raise UsageError(f"model source {source} holds no files", subject=str(source))
    return sorted(out, key=lambda f: f.path.encode("utf-8", "surrogateescape"))


def _source_file(path: Path, target: str) -> SourceFile:
    try:
        check_relative_path(target)
    except GapshipError as e:
        raise UsageError(f"cannot bundle {path}: {e.message}", subject=str(path)) from None
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", subject=str(path)) from None
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{path} is a symlink; bundles carry regular files only", subject=str(path))
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path} is not a regular file", subject=str(path))
    mode = 0o755 if st.st_mode & 0o111 else 0o644
    return SourceFile(source=path, path=target, size=st.st_size, mode=mode)


def _created(now: datetime | None) -> datetime:
    """SOURCE_DATE_EPOCH makes builds reproducible; otherwise the current time."""
    if now is not None:
        return now
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return datetime.now(timezone.utc)
    # reproducible-builds.org/specs/source-date-epoch: a malformed value should fail the build, not be
    # ignored (that would silently make it unreproducible).
    try:
        if not (epoch.isascii() and epoch.isdigit()):
            raise ValueError(epoch)
        return datetime.fromtimestamp(int(epoch), timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise UsageError(f"SOURCE_DATE_EPOCH {epoch!r} is not a whole number of seconds since 1970 up to "
                         "year 9999", subject="SOURCE_DATE_EPOCH") from None


def _staging_dir(out: Path) -> Path:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as e:
        raise HostError(f"cannot create {out}: {e.strerror}", subject=str(out)) from None


def _write_payload(staging: Path, spec: BundleSpec, groups: list[tuple[str, str, list[SourceFile]]],
                   chunk_size: int, algorithm: str, created: datetime, progress: Progress) -> Manifest:
    (staging / CHUNKS).mkdir()
    writer = PayloadWriter(staging / CHUNKS, chunk_size=chunk_size, algorithm=algorithm,
                           mtime=int(created.timestamp()), progress=progress)
    try:
        for _, _, files in groups:
            for f in files:
                writer.add(f.source, f.path, f.size, f.mode)
        payload = writer.finish()
    finally:
        writer.abort()
    offsets, hashes = iter(payload.offsets), iter(payload.hashes)
    components = [
        Component(kind=kind, name=name, files=tuple(
            FileEntry(path=f.path, size=f.size, mode=f.mode, hash=next(hashes), offset=next(offsets)) for f in files))
        for kind, name, files in groups
    ]
    return Manifest(
        name=spec.name, version=spec.version, created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        hash_algorithm=algorithm, chunk_size=chunk_size, payload_size=payload.size,
        chunks=payload.chunks, components=tuple(components),
    )
