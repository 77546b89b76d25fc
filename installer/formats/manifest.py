"""The bundle manifest: a pure model (docs/format.md, "manifest.json").

Frozen dataclasses with :meth:`Manifest.from_bytes` / :meth:`Manifest.to_bytes`. No I/O happens here.
``from_bytes`` accepts only canonical JSON (RFC 8785 subset: sorted keys, no insignificant whitespace,
integers only) that passes every structural rule below; anything else raises
:class:`~gapship.installer.errors.UnsafeContentError` naming the field. The caller must have checked
the signatures over the exact bytes *before* calling it (see :mod:`gapship.installer.trust`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from packaging.version import InvalidVersion, Version

from ..errors import UnsafeContentError
from ..kit import JSON_STRING, Fields, canonical_json, every_repr, parse_json
from ..kit import MAX_SAFE_INTEGER as MAX_SAFE_INTEGER  # one of the manifest's documented limits ("Limits")
from ..crypto.hashing import HASH_ALGORITHMS, digest_hex_length
from .paths import check_no_collisions, check_relative_path
from .timestamps import TIME_RE

FORMAT_NAME = "gapship-bundle"
FORMAT_VERSION = 1

# Hard caps, checked before (size) or while (counts) parsing; docs/format.md "Limits".
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
MAX_FILES = 200_000
MAX_CHUNKS = 100_000  # names stay five digits (00000..99999), so `cat chunks/*` is in order
MIN_CHUNK_SIZE = 512
MAX_CHUNK_SIZE = 16 * 1024**3
MAX_HEADER_REGION = 8 * 1024  # bytes of tar headers (pax + ustar) allowed before one file's data
# JSON containers a manifest within the caps can hold: the top object and "bundle", one object per
# chunk, per component and per file; the "chunks" and "components" lists and one "files" list per
# component. Counted before json.loads builds anything (see _check_container_counts).
MAX_OBJECTS = 2 + MAX_CHUNKS + 2 * MAX_FILES
MAX_LISTS = 2 + MAX_FILES

BLOCK = 512
END_OF_ARCHIVE = 2 * BLOCK
RECORD = 20 * BLOCK  # tar writers pad the archive to a whole record of this size

COMPONENT_KINDS = ("model", "safeguards", "dependencies")
POLICY_PATH = "safeguards/policy.toml"  # the one file of the one safeguards component (docs/policy.md)
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ALLOWED_MODES = (0o644, 0o755)


def padded(n: int) -> int:
    """``n`` rounded up to the next tar block."""
    return (n + BLOCK - 1) // BLOCK * BLOCK


def chunk_name(index: int) -> str:
    return f"{index:05d}.bin"


def check_name(value: str, what: str) -> None:
    if not _NAME_RE.fullmatch(value):
        raise UnsafeContentError(
            f"{what} {value!r} must match {_NAME_RE.pattern} (lower-case letters, digits, '.', '_', '-')",
            subject=what,
        )


def check_version(value: str) -> None:
    try:
        normal = str(Version(value))
    except InvalidVersion:
        raise UnsafeContentError(f"version {value!r} is not a PEP 440 version", subject="version") from None
    if normal != value:
        raise UnsafeContentError(
            f"version {value!r} is not in normalised PEP 440 form (write {normal!r})", subject="version"
        )


@dataclass(frozen=True, slots=True)
class Chunk:
    name: str
    size: int
    hash: str


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    mode: int
    hash: str
    offset: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    files: tuple[FileEntry, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    created: str
    hash_algorithm: str
    chunk_size: int
    payload_size: int
    chunks: tuple[Chunk, ...]
    components: tuple[Component, ...]
    expires: str | None = None
    format_version: int = FORMAT_VERSION
    _index: Mapping[str, Chunk] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _validate(self)
        object.__setattr__(self, "_index", {c.name: c for c in self.chunks})

    # -- views -------------------------------------------------------------------------------

    def files(self) -> Iterator[FileEntry]:
        """Every file, in payload order."""
        for component in self.components:
            yield from component.files

    def chunk(self, name: str) -> Chunk | None:
        return self._index.get(name)

    def chunk_offset(self, index: int) -> int:
        return index * self.chunk_size

    @property
    def file_count(self) -> int:
        return sum(len(c.files) for c in self.components)

    # -- bytes -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self._head() | {"components": [
            {"kind": comp.kind, "name": comp.name, "files": [_file_dict(f) for f in comp.files]}
            for comp in self.components
        ]}

    def _head(self) -> dict[str, Any]:
        """Every top-level member but ``components``."""
        out: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "bundle": {"name": self.name, "version": self.version},
            "created": self.created,
            "hash_algorithm": self.hash_algorithm,
            "chunk_size": self.chunk_size,
            "payload_size": self.payload_size,
            "chunks": [{"name": c.name, "size": c.size, "hash": c.hash} for c in self.chunks],
        }
        if self.expires is not None:
            out["expires"] = self.expires
        return out

    def to_bytes(self) -> bytes:
        """Exactly ``canonical_json(self.to_dict())``, written a piece at a time (see _write_object)."""
        out = io.BytesIO()
        head = self._head() | {"components": None}  # written by _write_components, below
        _write_object(out, head, "components", partial(_write_components, out, self.components))
        return out.getvalue()  # BytesIO hands over its buffer: no second copy of the JSON

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse verified manifest bytes; refuse anything that is not canonical and well-formed."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise UnsafeContentError(
                f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte cap", subject="manifest.json"
            )
        _check_container_counts(data)
        # No depth scan (max_depth=None): a canonical manifest nests 6 deep, from_dict refuses any other
        # shape before walking it, and a scan of 32 MiB would cost every install. What nests deeper
        # than the stack ends in RecursionError, which parse_json turns into the message below.
        raw = parse_json(data, source="manifest.json", error=UnsafeContentError,
                         invalid="manifest is not valid JSON: {detail}",
                         number="manifest holds a non-integer number {text!r}",
                         deep="manifest JSON is nested too deeply", max_depth=None)
        manifest = cls.from_dict(raw)
        # The parsed tree is dropped before the canonical bytes are made from the model: holding both
        # it and to_dict's tree doubled the peak (about 130 MiB more at the 200,000-file cap).
        del raw
        if manifest.to_bytes() != data:
            raise UnsafeContentError(
                "manifest is not in canonical form (sorted keys, no whitespace, RFC 8785)", subject="manifest.json"
            )
        return manifest

    @classmethod
    def from_dict(cls, raw: object) -> Manifest:
        top = _obj(raw, "manifest", required={"format", "format_version", "bundle", "created",
                                              "hash_algorithm", "chunk_size", "payload_size", "chunks",
                                              "components"}, optional={"expires"})
        if top["format"] != FORMAT_NAME:
            raise UnsafeContentError(f"manifest format {top['format']!r} is not {FORMAT_NAME!r}", subject="format")
        version = _int(top["format_version"], "format_version")
        if version != FORMAT_VERSION:
            raise UnsafeContentError(
                f"manifest format_version {version} is not supported (this gapship reads {FORMAT_VERSION})",
                subject="format_version",
            )
        bundle = _obj(top["bundle"], "bundle", required={"name", "version"})
        chunks_raw = _list(top["chunks"], "chunks", MAX_CHUNKS)
        comps_raw = _list(top["components"], "components", MAX_FILES)
        return cls(
            name=_str(bundle["name"], "bundle.name"),
            version=_str(bundle["version"], "bundle.version"),
            created=_str(top["created"], "created"),
            expires=_str(top["expires"], "expires") if "expires" in top else None,
            hash_algorithm=_str(top["hash_algorithm"], "hash_algorithm"),
            chunk_size=_int(top["chunk_size"], "chunk_size"),
            payload_size=_int(top["payload_size"], "payload_size"),
            chunks=tuple(_chunk(c, i) for i, c in enumerate(chunks_raw)),
            components=_components(comps_raw),
            format_version=version,
        )


# -- canonical bytes, a piece at a time (docs/format.md, section 4.1) -----------------------------------

# canonical_json(to_dict()) held the manifest as a dict tree, a str and bytes at once: for 200,000
# files ("Limits") about 30 MB of JSON three times over, at the peak of every build and of every
# from_bytes check. Canonical JSON composes: an object is ``{``, its ``key:value`` members in key
# order joined by ``,``, then ``}``; a list likewise. So the same bytes are written a batch of files
# at a time into one buffer (tests/installer/formats/test_manifest.py holds them to canonical_json(to_dict())).
_BATCH = 1000  # files encoded per json.dumps call: small dicts in flight, few Python-level calls


def _file_dict(f: FileEntry) -> dict[str, object]:
    return {"path": f.path, "size": f.size, "mode": f.mode, "hash": f.hash, "offset": f.offset}


def _write_object(out: io.BytesIO, members: dict[str, object], key: str, write_value: Callable[[], None]) -> None:
    """``members`` as one canonical JSON object, the value of ``key`` written by ``write_value``."""
    out.write(b"{")
    for i, name in enumerate(sorted(members)):
        out.write(b"," if i else b"")
        out.write(canonical_json(name) + b":")
        if name == key:
            write_value()
        else:
            out.write(canonical_json(members[name]))
    out.write(b"}")


def _write_components(out: io.BytesIO, components: Sequence[Component]) -> None:
    out.write(b"[")
    for i, comp in enumerate(components):
        out.write(b"," if i else b"")
        _write_object(out, {"kind": comp.kind, "name": comp.name, "files": None}, "files",
                      partial(_write_files, out, comp.files))
    out.write(b"]")


def _write_files(out: io.BytesIO, files: Sequence[FileEntry]) -> None:
    out.write(b"[")
    for start in range(0, len(files), _BATCH):
        out.write(b"," if start else b"")
        batch = [_file_dict(f) for f in files[start:start + _BATCH]]
        out.write(canonical_json(batch)[1:-1])  # the members of the list, without its brackets
    out.write(b"]")


# -- parsing helpers (raise UnsafeContentError naming the field) -----------------------------------


def _check_container_counts(data: bytes) -> None:
    """Refuse, before parsing, bytes that hold more objects or lists than the caps allow.

    The count caps are otherwise checked on parsed lists, after json.loads has built every element:
    ``[{},{},...]`` declares 11 million files in 32 MiB and would cost gigabytes first. Braces inside
    strings are not structure, so strings are removed before counting; this is an upper bound for
    everything json.loads would build before it stops at an error (docs/format.md, "Limits").
    """
    if data.count(b"{") <= MAX_OBJECTS and data.count(b"[") <= MAX_LISTS:
        return  # raw counts bound the structural ones: the usual case costs two fast scans
    bare = JSON_STRING.sub(b"", data)
    objects, lists = bare.count(b"{"), bare.count(b"[")
    if objects > MAX_OBJECTS or lists > MAX_LISTS:
        raise UnsafeContentError(
            f"manifest holds {objects} objects and {lists} lists, over the cap of {MAX_FILES} files and "
            f"{MAX_CHUNKS} chunks", subject="manifest.json",
        )



# The kit's readers in the manifest's words: "manifest field X must be ...", unknown keys by repr.
# Bound once here: the manifest calls them five times for each of up to MAX_FILES files.
_FIELDS = Fields(UnsafeContentError, prefix="manifest field ", unknown=every_repr)
_obj = _FIELDS.mapping
_list = _FIELDS.array
_str = _FIELDS.string
_int = _FIELDS.integer


def _chunk(raw: object, i: int) -> Chunk:
    where = f"chunks[{i}]"
    obj = _obj(raw, where, required={"name", "size", "hash"})
    return Chunk(_str(obj["name"], f"{where}.name"), _int(obj["size"], f"{where}.size"), _str(obj["hash"], f"{where}.hash"))


def _components(raw: list[Any]) -> tuple[Component, ...]:
    out: list[Component] = []
    total = 0
    for i, item in enumerate(raw):
        where = f"components[{i}]"
        obj = _obj(item, where, required={"kind", "name", "files"})
        files_raw = _list(obj["files"], f"{where}.files", MAX_FILES - total)
        total += len(files_raw)
        files = tuple(_file(f, f"{where}.files[{j}]") for j, f in enumerate(files_raw))
        out.append(Component(_str(obj["kind"], f"{where}.kind"), _str(obj["name"], f"{where}.name"), files))
    return tuple(out)


_FILE_KEYS = frozenset({"path", "size", "mode", "hash", "offset"})


def _file(raw: object, where: str) -> FileEntry:
    obj = _obj(raw, where, required=_FILE_KEYS)
    return FileEntry(
        path=_str(obj["path"], where, ".path"),
        size=_int(obj["size"], where, ".size"),
        mode=_int(obj["mode"], where, ".mode"),
        hash=_str(obj["hash"], where, ".hash"),
        offset=_int(obj["offset"], where, ".offset"),
    )


# -- structural rules (docs/format.md, "Rules a verifier enforces") ------------------------------


def _validate(m: Manifest) -> None:
    check_name(m.name, "bundle name")
    check_version(m.version)
    for stamp, what in ((m.created, "created"), (m.expires, "expires")):
        if stamp is not None and not TIME_RE.fullmatch(stamp):
            raise UnsafeContentError(f"manifest field {what} {stamp!r} is not YYYY-MM-DDTHH:MM:SSZ", subject=what)
    if m.hash_algorithm not in HASH_ALGORITHMS:
        raise UnsafeContentError(
            f"hash_algorithm {m.hash_algorithm!r} is not one of {', '.join(HASH_ALGORITHMS)}", subject="hash_algorithm"
        )
    if not MIN_CHUNK_SIZE <= m.chunk_size <= MAX_CHUNK_SIZE:
        raise UnsafeContentError(
            f"chunk_size {m.chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}", subject="chunk_size"
        )
    _validate_chunks(m)
    _validate_files(m)


def _check_hash(value: str, algorithm: str, where: str) -> None:
    if len(value) != digest_hex_length(algorithm) or value.strip("0123456789abcdef"):
        raise UnsafeContentError(f"{where} hash {value!r} is not a lower-case hex {algorithm} digest", subject=where)


def _validate_chunks(m: Manifest) -> None:
    if not m.chunks:
        raise UnsafeContentError("manifest lists no chunks", subject="chunks")
    if len(m.chunks) > MAX_CHUNKS:
        raise UnsafeContentError(f"manifest lists {len(m.chunks)} chunks, over the cap of {MAX_CHUNKS}", subject="chunks")
    last = len(m.chunks) - 1
    for i, c in enumerate(m.chunks):
        if c.name != chunk_name(i):
            raise UnsafeContentError(f"chunk {i} is named {c.name!r}, expected {chunk_name(i)!r}", subject=c.name)
        full = c.size == m.chunk_size
        if not (full or (i == last and 0 < c.size < m.chunk_size)):
            raise UnsafeContentError(
                f"chunk {c.name} has size {c.size}; every chunk but the last must be exactly chunk_size "
                f"{m.chunk_size}, and the last between 1 and chunk_size", subject=c.name
            )
        _check_hash(c.hash, m.hash_algorithm, f"chunk {c.name}")
    total = m.chunk_size * last + m.chunks[last].size
    if total != m.payload_size:
        raise UnsafeContentError(f"chunk sizes add up to {total}, not payload_size {m.payload_size}", subject="payload_size")
    if m.payload_size % BLOCK or m.payload_size < END_OF_ARCHIVE:
        raise UnsafeContentError(f"payload_size {m.payload_size} is not a whole tar archive", subject="payload_size")


def _validate_files(m: Manifest) -> None:
    kinds_seen: set[tuple[str, str]] = set()
    cursor = 0  # end of the previous file's data, padded to a block
    count = 0
    for comp in m.components:
        where = f"component {comp.kind}/{comp.name}"
        if comp.kind not in COMPONENT_KINDS:
            raise UnsafeContentError(
                f"component kind {comp.kind!r} must be one of {', '.join(COMPONENT_KINDS)}", subject=where
            )
        check_name(comp.name, f"{comp.kind} name")
        if (comp.kind, comp.name) in kinds_seen:
            raise UnsafeContentError(f"{where} is listed twice", subject=where)
        kinds_seen.add((comp.kind, comp.name))
        root = _component_root(comp)
        for f in comp.files:
            count += 1
            if count > MAX_FILES:
                raise UnsafeContentError(f"manifest lists more than {MAX_FILES} files", subject="components")
            check_relative_path(f.path)
            if not f.path.startswith(root):
                raise UnsafeContentError(f"file {f.path!r} of {where} is not under {root}", subject=f.path)
            if f.mode not in ALLOWED_MODES:
                raise UnsafeContentError(f"file {f.path!r} has mode {f.mode:o}; only 644 and 755 are allowed", subject=f.path)
            _check_hash(f.hash, m.hash_algorithm, f"file {f.path!r}")
            header = f.offset - cursor
            if f.offset % BLOCK or not BLOCK <= header <= MAX_HEADER_REGION:
                raise UnsafeContentError(
                    f"file {f.path!r} has offset {f.offset}, which overlaps the previous file or leaves a "
                    f"header region of {header} bytes (allowed: {BLOCK}..{MAX_HEADER_REGION}, block-aligned)",
                    subject=f.path,
                )
            cursor = padded(f.end)
    trailer = m.payload_size - cursor
    if not END_OF_ARCHIVE <= trailer <= END_OF_ARCHIVE + RECORD:
        raise UnsafeContentError(
            f"files end at {cursor}, leaving {trailer} bytes for the end of the archive in payload_size "
            f"{m.payload_size} (allowed: {END_OF_ARCHIVE}..{END_OF_ARCHIVE + RECORD})",
            subject="payload_size",
        )
    check_no_collisions(f.path for f in m.files())
    _check_safeguards(m)


def _check_safeguards(m: Manifest) -> None:
    """Every bundle carries its vendor's safeguards policy, and only that, in one component: the
    policy is how the vendor's control travels (docs/policy.md), so a bundle without one is refused."""
    policies = [f.path for c in m.components if c.kind == "safeguards" for f in c.files]
    if policies != [POLICY_PATH]:
        raise UnsafeContentError(
            f"manifest must carry exactly one safeguards component holding only {POLICY_PATH} (found {policies})",
            subject="components",
        )


def _component_root(comp: Component) -> str:
    if comp.kind == "model":
        return f"models/{comp.name}/"
    return f"{comp.kind}/"
