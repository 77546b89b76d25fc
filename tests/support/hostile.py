"""Crafting hostile bundles byte by byte, for tests/security and tests/fuzz.

A :class:`Payload` is a tar stream written member by member: correct pax headers come from
``tarfile.TarInfo.tobuf`` (:func:`pax_header`), anything tarfile will not write comes from
:func:`raw_header`, and any other bytes can be appended with :meth:`Payload.raw`. Each declared member
becomes a manifest file entry, a plain dict the test may break at will. :func:`craft` cuts the stream
into chunks and describes it in a manifest dict; :func:`write_bundle` writes the manifest as canonical
JSON (or as any bytes the attack needs, bypassing the ``Manifest`` dataclass and its validation) and
signs it with the given keys: a trusted key where the attack assumes a compromised build, an untrusted
key or none where it does not.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapship.installer.crypto.keys import signature_file_name
from gapship.installer.formats.manifest import BLOCK, END_OF_ARCHIVE, FORMAT_NAME, RECORD, chunk_name
from gapship.installer.kit import canonical_json
from gapship_testing import POLICY, KeyPair

MTIME = 1_700_000_000
CREATED = "2026-01-01T00:00:00Z"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, data).hexdigest()


def pad(n: int, unit: int = BLOCK) -> int:
    return (n + unit - 1) // unit * unit


# -- tar headers -----------------------------------------------------------------------------------


def pax_header(path: str, size: int, *, mode: int = 0o644, type: bytes = tarfile.REGTYPE, linkname: str = "",
               pax: dict[str, str] | None = None, format: int = tarfile.PAX_FORMAT) -> bytes:
    """The header block(s) tarfile writes for one member (a pax 'x' header first when needed)."""
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.type, info.linkname, info.mtime = size, mode, type, linkname, MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if pax:
        info.pax_headers = dict(pax)
    return info.tobuf(format=format, encoding="utf-8", errors="surrogateescape")


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def raw_header(name: bytes, size: int, *, mode: int = 0o644, type: bytes = b"0", linkname: bytes = b"",
               prefix: bytes = b"", magic: bytes = b"ustar\x0000", checksum: int | None = None) -> bytes:
    """One ustar header block written by hand, for names and fields tarfile refuses to write."""
    if len(name) > 100 or len(linkname) > 100 or len(prefix) > 155:
        raise ValueError("field too long for a ustar header")
    block = bytearray(BLOCK)
    block[0:100] = name.ljust(100, b"\0")
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(MTIME, 12)
    block[148:156] = b" " * 8
    block[156:157] = type
    block[157:257] = linkname.ljust(100, b"\0")
    block[257:265] = magic
    block[329:337] = _octal(0, 8)
    block[337:345] = _octal(0, 8)
    block[345:500] = prefix.ljust(155, b"\0")
    total = sum(block) if checksum is None else checksum
    block[148:156] = b"%06o\x00 " % total
    return bytes(block)


# -- the payload -----------------------------------------------------------------------------------


def component_of(path: str) -> tuple[str, str]:
    """The component a path belongs to, by its first components (docs/format.md, "Install layout")."""
    parts = path.split("/")
    if parts[0] == "models" and len(parts) > 1:
        return "model", parts[1]
    if parts[0] == "dependencies":
        return "dependencies", "dependencies"
    return "safeguards", "safeguards"


@dataclass
class Payload:
    """A tar stream under construction, with the manifest components that describe it."""

    stream: bytearray = field(default_factory=bytearray)
    components: list[dict[str, Any]] = field(default_factory=list)
    algorithm: str = "sha256"

    def add(self, path: str, data: bytes = b"", *, mode: int = 0o644, header: bytes | None = None,
            component: tuple[str, str] | None = None, declare: bool = True) -> dict[str, Any]:
        """Append header, data and padding for one member; return its (mutable) manifest entry.
        ``header`` replaces the correct pax header; ``declare=False`` leaves it out of the manifest."""
        self.stream += pax_header(path, len(data), mode=mode) if header is None else header
        entry = {"path": path, "size": len(data), "mode": mode, "hash": digest(data, self.algorithm),
                 "offset": len(self.stream)}
        self.stream += data + bytes(pad(len(data)) - len(data))
        if declare:
            self._component(component or component_of(path))["files"].append(entry)
        return entry

    def raw(self, data: bytes) -> None:
        """Append bytes the manifest does not describe (undeclared members, garbage)."""
        self.stream += data

    def policy(self) -> dict[str, Any]:
        return self.add("safeguards/policy.toml", POLICY)

    def end(self) -> bytes:
        """Two zero blocks, then zeros to a whole tar record, as tar(1) and gapship build write."""
        self.stream += bytes(pad(len(self.stream)) - len(self.stream))
        end = len(self.stream) + END_OF_ARCHIVE
        self.stream += bytes(pad(end, RECORD) - len(self.stream))
        return bytes(self.stream)

    def _component(self, key: tuple[str, str]) -> dict[str, Any]:
        for comp in self.components:
            if (comp["kind"], comp["name"]) == key:
                return comp
        comp = {"kind": key[0], "name": key[1], "files": []}
        self.components.append(comp)
        return comp


def standard_payload(files: dict[str, bytes] | None = None, *, model: str = "tiny",
                     algorithm: str = "sha256") -> Payload:
    """A well-formed payload: the model's files (sorted), then the safeguards policy."""
    payload = Payload(algorithm=algorithm)
    for rel, data in sorted((files or {"config.json": b'{"hidden": 4}\n', "weights.bin": bytes(range(256)) * 9}).items()):
        payload.add(f"models/{model}/{rel}", data)
    payload.policy()
    return payload


# -- chunks, manifest, bundle ----------------------------------------------------------------------


def cut(stream: bytes, chunk_size: int) -> list[bytes]:
    return [stream[i:i + chunk_size] for i in range(0, len(stream), chunk_size)]


def chunk_entries(chunks: Sequence[bytes], algorithm: str = "sha256") -> list[dict[str, Any]]:
    return [{"name": chunk_name(i), "size": len(c), "hash": digest(c, algorithm)} for i, c in enumerate(chunks)]


@dataclass
class Crafted:
    """A bundle in memory: the manifest dict (edit it freely) and the chunk bytes."""

    manifest: dict[str, Any]
    chunks: list[bytes]

    def write(self, out: Path, *, signers: Iterable[KeyPair] = (), manifest_bytes: bytes | None = None) -> Path:
        data = manifest_json(self.manifest) if manifest_bytes is None else manifest_bytes
        return write_bundle(out, data, self.chunks, signers=signers)

    def rechunk(self) -> None:
        """Recompute the chunk list and payload_size after editing ``chunks`` (a compromised build)."""
        self.manifest["chunks"] = chunk_entries(self.chunks, self.manifest["hash_algorithm"])
        self.manifest["payload_size"] = sum(len(c) for c in self.chunks)


def manifest_json(value: object) -> bytes:
    """``canonical_json``; a lone surrogate (which UTF-8 cannot carry) is written as its JSON escape."""
    try:
        return canonical_json(value)
    except UnicodeEncodeError:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8", "backslashreplace")


def craft(payload: Payload | bytes, components: list[dict[str, Any]] | None = None, *, chunk_size: int = 4096,
          name: str = "demo", version: str = "2.0.0") -> Crafted:
    """Cut ``payload`` (ended if it is a :class:`Payload`) into chunks and describe it in a manifest
    (with the payload's hash algorithm)."""
    algorithm = "sha256"
    if isinstance(payload, Payload):
        components = payload.components if components is None else components
        algorithm = payload.algorithm
        stream = payload.end()
    else:
        stream = payload
    chunks = cut(stream, chunk_size)
    manifest = manifest_dict(chunk_entries(chunks, algorithm), components or [], chunk_size=chunk_size, name=name,
                             version=version)
    manifest["hash_algorithm"] = algorithm
    return Crafted(manifest, chunks)


def manifest_dict(chunks: list[dict[str, Any]], components: list[dict[str, Any]], *, chunk_size: int,
                  name: str = "demo", version: str = "2.0.0") -> dict[str, Any]:
    """A manifest (docs/format.md, "manifest.json") for the given chunk entries and components."""
    return {
        "format": FORMAT_NAME,
        "format_version": 1,
        "bundle": {"name": name, "version": version},
        "created": CREATED,
        "hash_algorithm": "sha256",
        "chunk_size": chunk_size,
        "payload_size": sum(c["size"] for c in chunks),
        "chunks": chunks,
        "components": copy.deepcopy(components),
    }


def write_bundle(out: Path, manifest_bytes: bytes, chunks: Sequence[bytes], *, signers: Iterable[KeyPair] = ()) -> Path:
    """Write a bundle directory: manifest.json as given, one signature per signer, the chunks."""
    (out / "chunks").mkdir(parents=True)
    (out / "signatures").mkdir()
    (out / "manifest.json").write_bytes(manifest_bytes)
    for key in signers:
        (out / "signatures" / signature_file_name(key.keyid)).write_bytes(key.key.sign(manifest_bytes))
    for i, data in enumerate(chunks):
        (out / "chunks" / chunk_name(i)).write_bytes(data)
    return out


def sign(bundle: Path, key: KeyPair) -> None:
    """(Re-)sign whatever manifest.json now holds, as a compromised build would."""
    data = (bundle / "manifest.json").read_bytes()
    (bundle / "signatures" / signature_file_name(key.keyid)).write_bytes(key.key.sign(data))


# -- the state of a prefix ---------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``, hidden and empty ones included: (type, mode, content or target).
    Equal snapshots mean nothing was added, removed or changed."""
    out: dict[str, tuple[Any, ...]] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
            else:
                out[rel] = ("special", st.st_mode)
    return out


def litter(home: Path) -> list[str]:
    """Entries of ``PREFIX/<name>`` that are neither a version directory, ``current`` nor the lock."""
    if not home.exists():
        return []
    return sorted(p.name for p in home.iterdir() if p.name.startswith(".") and p.name != ".lock")
