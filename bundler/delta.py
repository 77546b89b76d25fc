"""``gapship build --base OLD``: what a delta bundle may leave out (docs/format.md, section 11.1).

The base is the previous bundle's directory, or only its ``manifest.json`` and ``signatures/`` (all
the connected side needs to keep). Its signatures are checked before anything of it is used: against
a trust directory (``--base-trust``), or else against the public halves of the keys signing the new
bundle, through the installer's one trust decision (:func:`~gapship.installer.trust.verify_release`).
The base manifest then only answers one question: which (hash, size) pairs its version holds. A new
file with such a pair is not put into the payload but marked ``"source": "base"``; the site takes it
from the installed base and checks it against the new signed manifest before it uses it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..installer.bundle.files import read_raw_bundle
from ..installer.crypto.hashing import hash_fd
from ..installer.crypto.keys import PublicKey
from ..installer.errors import UsageError
from ..installer.formats.manifest import PAYLOAD_ONLY_DIRS, PAYLOAD_ONLY_FILES, BaseRef, Manifest
from ..installer.kit import Refusal, open_regular
from ..installer.trust import TrustStore, manifest_digest, store_of_keys, verify_release


@dataclass(frozen=True)
class Base:
    """A verified base: the reference the delta names, and the contents its version holds."""

    ref: BaseRef
    manifest: Manifest
    contents: frozenset[tuple[str, int]]  # (hash, size) of every file of the base version
    sizes: frozenset[int]

    def has(self, digest: str, size: int) -> bool:
        return (digest, size) in self.contents


def load_base(path: Path, *, keys: Sequence[PublicKey], trust_dir: Path | None) -> Base:
    """Read and verify the base at ``path`` (a bundle directory: ``manifest.json`` and ``signatures/``
    are what is read); raise :class:`TrustError` (exit 4) when its signatures do not verify."""
    raw = read_raw_bundle(path)
    trust = TrustStore.from_dir(trust_dir) if trust_dir is not None else \
        store_of_keys(keys, source=f"the public halves of the --key keys (base {path})")
    verify_release(raw.manifest_bytes, raw.signatures, trust)
    m = Manifest.from_bytes(raw.manifest_bytes)
    contents = frozenset((f.hash, f.size) for f in m.files())
    return Base(ref=BaseRef(m.name, m.version, manifest_digest(raw.manifest_bytes, m.hash_algorithm)),
                manifest=m, contents=contents, sizes=frozenset(size for _, size in contents))


def check_base_fits(base: Base, *, name: str, version: str, algorithm: str) -> None:
    """A delta is of the same bundle name, newer than its base, and hashed with the base's algorithm
    (a file's content is matched by its hash: across algorithms nothing could match)."""
    m = base.manifest
    if m.name != name:
        raise UsageError(f"base {m.name} {m.version} is another bundle than {name}", subject=m.name)
    if m.version == version:
        raise UsageError(f"base {m.name} {m.version} is the version being built", subject=m.version)
    if m.hash_algorithm != algorithm:
        raise UsageError(f"base {m.name} {m.version} uses {m.hash_algorithm} and this build {algorithm}: build with "
                         f"--hash {m.hash_algorithm}, or a full bundle", subject=m.hash_algorithm)


def may_come_from_base(path: str) -> bool:
    """Whether a file may be taken from the base at all (section 11.1: the policy, the SBOM and the
    dependencies' target and lock are always in the payload)."""
    return path not in PAYLOAD_ONLY_FILES and not path.startswith(PAYLOAD_ONLY_DIRS)


def source_hash(source: str, size: int, algorithm: str, buffer: bytearray) -> str | None:
    """The hash of the first ``size`` bytes of ``source``, or None when it no longer has ``size`` bytes
    (the payload writer then reports the change in its own words)."""
    fd, _st = open_regular(Path(source), refuse=_refuse_source)
    try:
        digest, seen = hash_fd(fd, algorithm, limit=size, buffer=buffer)
    finally:
        os.close(fd)
    return digest if seen == size else None


def _refuse_source(r: Refusal) -> Exception:
    return UsageError(f"cannot read {r.path}: {r.strerror}", subject=str(r.path))
