"""The bundle's provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate, written to
``provenance/statement.json`` and signed beside the manifest (docs/format.md 11.4, docs/sbom.md).

Its subjects are ``manifest.json`` and every chunk, by digest, so the statement is made after the
manifest and signed separately by the same keys, like the parity layout: a file inside the payload
cannot name the digest of the manifest that covers it. The predicate records the builder (gapship
and its version), the build command, the spec's digest, ``SOURCE_DATE_EPOCH`` (the manifest's
``created``), and every input by digest: each model file (and its Hugging Face origin where the
manifest names one), each wheel with its purl and the index or folders it came from, the policy and
the dependency files. Written as canonical JSON (docs/format.md 4.1).
"""

from __future__ import annotations

import io
import os
import re
import secrets
from datetime import datetime, timezone
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain
from pathlib import Path

from ..installer import __version__
from ..installer.bundle.files import SIGNATURES
from ..installer.errors import UsageError
from ..installer.crypto.hashing import new_hasher
from ..installer.crypto.keys import signature_file_name
from ..installer.formats.manifest import Component, Manifest
from ..installer.host.atomic import atomic_write
from ..installer.kit import canonical_json, read_bounded
from ..installer.provenance import (
    MANIFEST_SUBJECT, MAX_STATEMENT_BYTES, PREDICATE_TYPE, PROVENANCE, STATEMENT, STATEMENT_TYPE,
)
from .keys import SigningKey
from .sbom import WheelInfo, json_string
from .spec import MAX_SPEC_BYTES, BundleSpec

BUILD_TYPE = "urn:gapship:build-type:v1"  # names this predicate's parameters (docs/sbom.md, "Provenance")
BUILDER_ID = "urn:gapship:builder:gapship-build"  # the one builder: gapship build, its version beside it


def render_provenance(*, manifest: Manifest, manifest_bytes: bytes, spec: BundleSpec, command: Sequence[str],
                      wheels: Mapping[str, WheelInfo]) -> bytes:
    """The statement's canonical JSON and a newline. Its two long lists (a subject per chunk, an input
    per file: 100,000 and 200,000 at the caps) are written an entry at a time into the output instead
    of as one dict of dicts serialised whole, which peaked near 300 MB at the file cap; the bytes are
    the same (tests/bundler/test_sbom_golden.py)."""
    algorithm = manifest.hash_algorithm
    head = {"name": MANIFEST_SUBJECT, "digest": {algorithm: _digest(manifest_bytes, algorithm)}}
    subjects = chain((head,), ({"name": f"chunks/{c.name}", "digest": {algorithm: c.hash}} for c in manifest.chunks))
    marker = f"gapship-list-{secrets.token_hex(16)}"
    spec_bytes = read_bounded(spec.path, cap=MAX_SPEC_BYTES, follow_symlinks=True,
                              refuse=lambda r: UsageError(f"spec {r.path}: cannot read it again: {r.strerror}",
                                                          subject=str(r.path)))
    epoch = manifest.created
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": f"{marker}-subject",
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "command": list(command),
                    "spec": {"path": spec.path.name, "digest": {algorithm: _digest(spec_bytes, algorithm)}},
                    "bundle": {"name": manifest.name, "version": manifest.version},
                },
                "internalParameters": {
                    "SOURCE_DATE_EPOCH": _epoch(epoch), "hash_algorithm": algorithm,
                    "chunk_size": manifest.chunk_size, "format_version": manifest.format_version,
                },
                "resolvedDependencies": f"{marker}-inputs",
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"gapship": __version__}},
                "metadata": {"startedOn": epoch},
            },
        },
    }
    lists = {b"subject": subjects, b"inputs": _inputs(manifest, spec, wheels)}
    parts = re.split(f'"{marker}-(subject|inputs)"'.encode(), canonical_json(statement))
    if sorted(parts[1::2]) != sorted(lists):  # each placeholder once: the marker is random
        raise AssertionError(f"provenance list placeholders out of place: {parts[1::2]!r}")
    out = io.BytesIO()  # getvalue() hands over its buffer: the statement is held once, not twice
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.write(part)
            continue
        out.write(b"[")
        for n, entry in enumerate(lists[part]):
            if n:
                out.write(b",")
            out.write(_entry_json(entry))
        out.write(b"]")
    out.write(b"\n")
    return out.getvalue()


def _entry_json(entry: object) -> bytes:
    """``canonical_json(entry)`` for one subject or input. The common entry (a name and one digest)
    is written directly, as canonical_json writes it (keys sorted: digest, name): json.dumps with
    these options builds an encoder per call, most of the statement's time for 20,000 files."""
    if isinstance(entry, dict) and entry.keys() == {"digest", "name"}:
        digest, name = entry["digest"], entry["name"]
        if isinstance(digest, dict) and len(digest) == 1 and isinstance(name, str):
            (alg, value), = digest.items()
            if isinstance(alg, str) and isinstance(value, str):
                text = f'{{"digest":{{{json_string(alg)}:{json_string(value)}}},"name":{json_string(name)}}}'
                return text.encode("utf-8")
    return canonical_json(entry)


def _epoch(created: str) -> int:
    return int(datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())


def _digest(data: bytes, algorithm: str) -> str:
    h = new_hasher(algorithm)
    h.update(data)
    return h.hexdigest()


def _inputs(manifest: Manifest, spec: BundleSpec, wheels: Mapping[str, WheelInfo]) -> Iterator[dict[str, object]]:
    """Every file of the bundle but the SBOM (made by the build itself), by digest, with where it came from."""
    deps = spec.dependencies
    where_from: dict[str, object] = {}
    if deps is not None:
        where_from = {"index_url": deps.index_url or "https://pypi.org/simple",
                      "find_links": [p.name for p in deps.find_links]}
    for comp in manifest.components:
        if comp.kind == "sbom":
            continue
        for f in comp.files:
            entry: dict[str, object] = {"name": f.path, "digest": {manifest.hash_algorithm: f.hash}}
            uri = _uri(comp, f.path, wheels)
            if uri is not None:
                entry["uri"] = uri
            if f.path in wheels and where_from:
                entry["annotations"] = where_from
            if f.from_base:
                entry["annotations"] = {"source": "base"}
            yield entry


def _uri(comp: Component, path: str, wheels: Mapping[str, WheelInfo]) -> str | None:
    if path in wheels:
        return f"pkg:pypi/{wheels[path].name}@{wheels[path].version}"
    if comp.kind == "model" and comp.origin is not None:
        rel = path.split("/", 2)[2]
        revision = comp.origin.revision or "main"
        return f"https://huggingface.co/{comp.origin.hf_repo}/resolve/{revision}/{rel}"
    return None


def write_provenance(bundle: Path, statement: bytes, keys: Sequence[SigningKey]) -> None:
    """``provenance/statement.json`` and one ``provenance/signatures/<keyid>.<algorithm>.sig`` per key."""
    folder = bundle / PROVENANCE
    (folder / SIGNATURES).mkdir(parents=True, exist_ok=True)
    atomic_write(folder / STATEMENT, statement)
    for key in keys:
        sign_provenance(bundle, key, statement)


def provenance_statement(bundle: Path) -> bytes | None:
    """The bundle's ``provenance/statement.json``, or None when it has none (an older bundle)."""
    path = bundle / PROVENANCE / STATEMENT
    if not path.is_file() or path.is_symlink():
        return None
    return read_bounded(path, cap=MAX_STATEMENT_BYTES, refuse=lambda r: UsageError(
        f"cannot read {r.path}: {r.strerror}", subject=str(r.path)))


def sign_provenance(bundle: Path, key: SigningKey, statement: bytes | None = None) -> None:
    """Add ``key``'s signature over the statement (``gapship sign`` calls this with the bundle's own)."""
    folder = bundle / PROVENANCE
    if statement is None:
        statement = provenance_statement(bundle)
        if statement is None:
            return
    os.makedirs(folder / SIGNATURES, exist_ok=True)
    name = signature_file_name(key.public.keyid, key.algorithm)
    atomic_write(folder / SIGNATURES / name, key.sign(statement))
