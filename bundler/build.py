"""``gapship build``: freeze a spec into a signed, chunked bundle (docs/format.md)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

from ..installer.bundle.files import CHUNKS, MANIFEST, PARITY, SIGNATURES
from ..installer.host.fs import remove_tree
from ..installer.errors import HostError, UsageError
from ..installer.crypto.hashing import Progress, new_hasher, no_progress
from ..installer.formats.manifest import (
    MAX_CHUNK_SIZE, MAX_FILES, MIN_CHUNK_SIZE, POLICY_PATH, Component, FileEntry, FileTable, Manifest,
    needed_format_version,
)
from ..installer.deploy.deps import TARGET, Target
from ..installer.formats.policy import parse_policy
from ..installer.kit import Refusal, read_bounded
from ..installer.safeguards import MAX_POLICY_BYTES
from .expiry import parse_expires
from .parity import ParityResult, write_parity
from .payload import PayloadWriter
from .sources import SourceGroup, Sources, collect_sources
from .deps.freeze import FrozenDependencies, frozen_dependencies
from .delta import Base, check_base_fits, may_come_from_base, source_hash
from .keys import SigningKey
from .sign import write_signature
from .spec import BundleSpec
from .provenance import render_provenance, write_provenance
from .sbom import WheelInfo, require_cyclonedx, sbom_stream, wheels_of
from ..installer.sbom import SBOM_DIR, SBOM_PATH

DEFAULT_CHUNK_SIZE = 64 * 1024**2
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
class BuildResult:
    out: Path
    manifest: Manifest
    signer: str
    signers: tuple[str, ...] = ()  # every key id that signed, the first being ``signer``
    parity: ParityResult | None = None  # with --parity

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
            "parity": self.parity.to_dict() if self.parity else None,
            "base": m.base.to_dict() if m.base is not None else None,
            "from_base": from_base_counts(m),
            "models": model_summaries(m),
        }


def model_summaries(m: Manifest) -> list[dict[str, object]]:
    """Each model's name, files and bytes, with its origin, card and what its selection left out
    (null when the spec gave none): what build --json and inspect --json say of the models."""
    return [{"name": c.name, "files": len(c.files), "bytes": c.size, **{k: None for k in ("origin", "card", "left_out")},
             **c.extras()} for c in m.components if c.kind == "model"]


def from_base_counts(m: Manifest) -> dict[str, int]:
    """How much of the version a delta leaves to its base: files and bytes (0 and 0 for a full bundle)."""
    files = bytes_ = 0
    for f in m.base_files():
        files, bytes_ = files + 1, bytes_ + f.size
    return {"files": files, "bytes": bytes_}


def build(spec: BundleSpec, *, out: Path, key: SigningKey, chunk_size: int = DEFAULT_CHUNK_SIZE,
          algorithm: str = "sha256", progress: Progress = no_progress, now: datetime | None = None,
          expires: str | None = None, also_sign: Sequence[SigningKey] = (),
          dependencies: FrozenDependencies | None = None, offline: bool = False,
          include_gapship: bool = False, sources: Sources | None = None,
          parity: Fraction | None = None, base: Base | None = None,
          command: Sequence[str] = ()) -> BuildResult:
    """Write a complete, signed bundle to ``out`` (which must not exist yet), or nothing at all.

    ``expires`` is a duration after the creation time (``90d``) or an absolute time (docs/trust.md);
    ``also_sign`` adds more signers, e.g. the ML-DSA-87 half of a hybrid pair. ``dependencies`` are
    frozen ones (see :func:`~.deps.freeze.frozen_dependencies`); when not given and the spec has
    ``[dependencies]``, they are frozen here, with ``offline`` and ``include_gapship``. ``sources`` is
    what :func:`~.sources.collect_sources` (or ``add_dependencies``) returned for this spec and these
    dependencies, so that a caller who already walked the source tree need not walk it again.
    ``parity``: the share of parity chunks to add (``--parity 10%``: 1/10), docs/format.md section 12. With a
    verified ``base`` (:func:`~.delta.load_base`), the bundle is a delta of it (docs/format.md, 11.1).
    ``command`` is the build command the provenance records (docs/sbom.md); default ``gapship build SPEC``."""
    check_output_free(out)
    require_cyclonedx()
    if base is not None:
        check_base_fits(base, name=spec.name, version=spec.version, algorithm=algorithm)
    keys = _distinct_keys([key, *also_sign])
    policy_bytes = _read_policy(spec)
    with _dependencies(spec, dependencies, out, offline=offline, include_gapship=include_gapship) as deps:
        if sources is None:
            sources = collect_sources(spec, deps)
        return _build(spec, out=out, keys=keys, chunk_size=chunk_size, algorithm=algorithm, progress=progress,
                      now=now, expires=expires, policy_bytes=policy_bytes, groups=sources, parity=parity,
                      base=base, command=tuple(command) or ("gapship", "build", spec.path.name))


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
           groups: Sources, parity: Fraction | None = None, base: Base | None = None,
           command: Sequence[str] = ()) -> BuildResult:
    created = _created(now).replace(microsecond=0)
    _check_file_count(groups)
    until = parse_expires(expires, start=created) if expires is not None else None
    staging = _staging_dir(out)
    try:
        wheels = wheels_of(groups)  # each wheel's METADATA, for the SBOM and the provenance
        manifest = _write_payload(staging, spec, groups, chunk_size, algorithm, created, progress, base, wheels)
        if until is not None:
            manifest = replace(manifest, expires=until.strftime("%Y-%m-%dT%H:%M:%SZ"))
        _check_policy_unchanged(manifest, policy_bytes, spec)
        data = manifest.to_bytes()  # once, and a piece at a time: 30 MB for 200,000 files
        (staging / MANIFEST).write_bytes(data)
        (staging / SIGNATURES).mkdir()
        keyids = tuple(write_signature(staging, data, k) for k in keys)
        statement = render_provenance(manifest=manifest, manifest_bytes=data, spec=spec, command=command,
                                      wheels=wheels)
        write_provenance(staging, statement, keys)
        added = None
        if parity is not None:  # the chunks were just written: read back from the page cache
            (staging / PARITY).mkdir()
            added = write_parity(staging, staging / PARITY, manifest, data, share=parity, keys=keys, check=False)
        os.chmod(staging, 0o755)  # mkdtemp made it 0700; a transfer pipeline may run as another user
        os.rename(staging, out)
    except OSError as e:
        remove_tree(staging)
        raise HostError(f"cannot write bundle {out}: {e.strerror}", subject=str(out)) from None
    except BaseException:
        remove_tree(staging)
        raise
    return BuildResult(out=out, manifest=manifest, signer=keyids[0], signers=keyids, parity=added)


def _check_file_count(groups: Sources) -> None:
    """The SBOM is one file more than the sources: refuse a bundle no site would accept (docs/format.md, "Limits")."""
    count = sum(len(g) for g in groups) + 1
    if count > MAX_FILES:
        raise UsageError(f"the bundle would hold {count} files with its SBOM, over the cap of {MAX_FILES}",
                         subject="files")


def _distinct_keys(keys: list[SigningKey]) -> list[SigningKey]:
    seen: set[str] = set()
    for k in keys:
        if k.public.keyid in seen:
            raise UsageError(f"key {k.public.keyid[:16]} is given twice", subject=k.public.keyid)
        seen.add(k.public.keyid)
    return keys


def _read_policy(spec: BundleSpec) -> bytes:
    # Capped at what the installer reads (a bigger policy could be built, never installed).
    data = read_bounded(spec.safeguards, cap=MAX_POLICY_BYTES, refuse=_refuse_policy, follow_symlinks=True)
    policy = parse_policy(data, source=str(spec.safeguards))
    policy.check_models({m.name for m in spec.models})
    return data


def _refuse_policy(r: Refusal) -> Exception:
    return UsageError(f"safeguards policy {r.path}: {r.strerror}", subject=str(r.path))


def _check_policy_unchanged(manifest: Manifest, policy: bytes, spec: BundleSpec) -> None:
    """The policy was validated from the bytes read first; the payload must carry exactly those."""
    hasher = new_hasher(manifest.hash_algorithm)
    hasher.update(policy)
    # In the safeguards component: the models' files, nearly all of them, are not walked for it.
    bundled = next(f for c in manifest.components if c.kind == "safeguards" for f in c.files if f.path == POLICY_PATH)
    if bundled.hash != hasher.hexdigest():
        raise UsageError(f"{spec.safeguards} changed while the bundle was being built", subject=str(spec.safeguards))


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


def _write_payload(staging: Path, spec: BundleSpec, groups: Sources, chunk_size: int, algorithm: str,
                   created: datetime, progress: Progress, base: Base | None = None,
                   wheels: Mapping[str, WheelInfo] | None = None) -> Manifest:
    (staging / CHUNKS).mkdir()
    reused = _reused(groups, base, algorithm, progress)
    writer = PayloadWriter(staging / CHUNKS, chunk_size=chunk_size, algorithm=algorithm,
                           mtime=int(created.timestamp()), progress=progress)
    try:
        for group in groups:
            for f in group:
                if f.path not in reused:
                    writer.add(f.source, f.path, f.size, f.mode)
        # The SBOM lists every other file by the hash the manifest gives it, so it goes last (docs/sbom.md).
        hashes = writer.hashes_so_far()
        listed = _components(groups, reused, writer.position_offsets(), hashes)
        # Streamed, a piece at a time: the SBOM of 200,000 files is 30 MB, its one-dict rendering ~250 MB more.
        sbom = sbom_stream(name=spec.name, version=spec.version, created=created, algorithm=algorithm,
                           components=listed, wheels=wheels or {}, target=_target(groups))
        writer.add_pieces(sbom.pieces(), sbom.size, SBOM_PATH, 0o644)
        payload = writer.finish()
    finally:
        writer.abort()
    # The files before the SBOM are those listed, with final offsets and hashes: kept, not made again.
    if list(payload.hashes[:-1]) != hashes:
        raise AssertionError("the payload's files changed after the SBOM listed them")
    components = [*listed,
                  Component(kind="sbom", name=SBOM_DIR, files=(FileEntry(
                      path=SBOM_PATH, size=sbom.size, mode=0o644, hash=payload.hashes[-1],
                      offset=payload.offsets[-1]),))]
    ref = base.ref if base is not None else None
    return Manifest(
        name=spec.name, version=spec.version, created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        hash_algorithm=algorithm, chunk_size=chunk_size, payload_size=payload.size,
        chunks=payload.chunks, components=tuple(components),
        format_version=needed_format_version(base=ref, components=components), base=ref,
    )


def _components(groups: Sources, reused: dict[str, str], offsets_seq: Sequence[int],
                hashes_seq: Sequence[str]) -> list[Component]:
    """The manifest's components for ``groups``, the payload's files taking their offsets and hashes in order."""
    offsets, hashes = iter(offsets_seq), iter(hashes_seq)
    return [Component(kind=g.kind, name=g.name, origin=g.origin, card=g.card, left_out=g.left_out,
                      files=_file_table(g, reused, offsets, hashes)) for g in groups]


def _file_table(group: SourceGroup, reused: dict[str, str], offsets: Iterator[int],
                hashes: Iterator[str]) -> FileTable:
    """The group's rows, straight into the table a Component keeps, without a FileEntry per file that
    the table would take apart again."""
    table = FileTable()
    for path, size, mode in zip(group.paths, group.sizes, group.modes):
        if path in reused:
            table.append(path, size, mode, reused[path], 0, from_base=True)
        else:
            table.append(path, size, mode, next(hashes), next(offsets))
    return table


def _refuse_target(r: Refusal) -> Exception:
    """The frozen dependencies' target.json changed under the build (it is the build's own file)."""
    return HostError(f"cannot read {r.path} (the frozen dependencies' target): {r.strerror or r.reason}",
                     subject=str(r.path))


def _target(groups: Sources) -> Target | None:
    """The dependencies' target (for the SBOM's dependency markers), from the target.json being bundled."""
    for g in groups:
        for f in g:
            if f.path == TARGET:
                return Target.from_bytes(read_bounded(Path(f.source), cap=f.size, refuse=_refuse_target))
    return None


def _reused(groups: Sources, base: Base | None, algorithm: str, progress: Progress) -> dict[str, str]:
    """Bundle path -> hash of each file a delta takes from its base: its (hash, size) is one of the
    base's (by content, so a renamed or duplicated file costs nothing). Only files of a size the base
    has are hashed here; their bytes are read a second time only if they turn out to be new."""
    if base is None:
        return {}
    buffer = bytearray(4 * 1024 * 1024)
    out: dict[str, str] = {}
    for group in groups:
        for f in group:
            if f.size in base.sizes and may_come_from_base(f.path):
                digest = source_hash(f.source, f.size, algorithm, buffer)
                if digest is not None and base.has(digest, f.size):
                    out[f.path] = digest
                    progress(f.size)
    return out
