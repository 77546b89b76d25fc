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
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, overload

from packaging.version import InvalidVersion, Version

from ..errors import UnsafeContentError
from ..kit import JSON_STRING, ArraySink, Fields, canonical_json, every_repr, parse_json_streamed
from ..kit import MAX_SAFE_INTEGER as MAX_SAFE_INTEGER  # one of the manifest's documented limits ("Limits")
from ..crypto.hashing import HASH_ALGORITHMS, digest_hex_length
from .paths import check_no_collisions, check_relative_path
from .policy import ID_RE as _NAME_RE  # bundle and component names are the ids a policy names models by
from .timestamps import TIME_RE

FORMAT_NAME = "gapship-bundle"
# The newest format this reader knows (docs/format.md, section 9). Version 2 adds deltas (a base and
# files taken from it), model origins and cards, and the sbom component (section 11); a writer still
# writes 1 when none of them is used, so that sites with an older gapship keep installing.
FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, 2)
FROM_BASE = "base"  # the one value of a file's "source": its bytes come from the installed base version

# Hard caps, checked before (size) or while (counts) parsing; docs/format.md "Limits".
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
MAX_FILES = 200_000
MAX_CHUNKS = 100_000  # names stay five digits (00000..99999), so `cat chunks/*` is in order
MIN_CHUNK_SIZE = 512
MAX_CHUNK_SIZE = 16 * 1024**3
MAX_HEADER_REGION = 8 * 1024  # bytes of tar headers (pax + ustar) allowed before one file's data
# One component per model folder, plus the policy and the dependencies. It was MAX_FILES (200,000)
# until issue 13; a component costs a table of its own, and no bundle has thousands of models.
MAX_COMPONENTS = 4096
# JSON containers a manifest within the caps can hold: the top object and "bundle", one object per
# chunk, per component and per file; the "chunks" and "components" lists and one "files" list per
# component. Counted before anything is parsed (see _check_container_counts).
MAX_OBJECTS = 2 + MAX_CHUNKS + MAX_COMPONENTS + MAX_FILES
MAX_LISTS = 2 + MAX_COMPONENTS

BLOCK = 512
END_OF_ARCHIVE = 2 * BLOCK
RECORD = 20 * BLOCK  # tar writers pad the archive to a whole record of this size

COMPONENT_KINDS = ("model", "safeguards", "dependencies", "sbom")  # sbom: format v2 (section 11.3)
CARD_FIELDS = ("license", "task", "architecture", "base_model", "description")  # a model card (11.2)
MAX_CARD_TEXT = 4096  # characters per model card field
HF_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")  # org/name
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
DIGEST_RE = re.compile(r"(sha256|sha384|sha512):([0-9a-f]+)")
POLICY_PATH = "safeguards/policy.toml"  # the one file of the one safeguards component (docs/policy.md)
ALLOWED_MODES = (0o644, 0o755)
# What a delta must carry in its payload, never take from its base (section 11.1): the policy, every
# SBOM file, and the dependencies' target and lock, which the install reads out of the chunks before
# anything is written (safeguards.read_bundled_policy, deploy.deps.plan_dependencies).
PAYLOAD_ONLY_DIRS = ("sbom/",)
PAYLOAD_ONLY_FILES = frozenset({POLICY_PATH, "dependencies/target.json", "dependencies/requirements.lock"})


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
    """One file of the version. ``from_base`` (format v2, section 11.1): its bytes are not in the
    payload but taken from the installed base version, by hash; its ``offset`` is then 0 and means
    nothing."""

    path: str
    size: int
    mode: int
    hash: str
    offset: int
    from_base: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True, slots=True)
class BaseRef:
    """The version a delta bundle was built against (format v2, section 11.1), named by the digest
    of its manifest (``<algorithm>:<hex>``, as ``manifest_digest`` everywhere)."""

    name: str
    version: str
    manifest_digest: str

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "manifest_digest": self.manifest_digest}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a model came from (format v2, section 11.2): a Hugging Face repo id and, when known, the
    commit its files were taken at."""

    hf_repo: str
    revision: str | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"hf_repo": self.hf_repo}
        if self.revision is not None:
            out["revision"] = self.revision
        return out


@dataclass(frozen=True, slots=True)
class ModelCard:
    """The spec's model card (format v2, section 11.2): what an SBOM says of the model."""

    license: str | None = None
    task: str | None = None
    architecture: str | None = None
    base_model: str | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {k: v for k in CARD_FIELDS if (v := getattr(self, k)) is not None}


@dataclass(frozen=True, slots=True)
class LeftOut:
    """What a model's include/exclude selection left out of its source (format v2, section 11.2)."""

    files: int
    bytes: int

    def to_dict(self) -> dict[str, object]:
        return {"files": self.files, "bytes": self.bytes}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    files: Sequence[FileEntry]  # a FileTable: given any sequence of FileEntry, the constructor makes one
    origin: Origin | None = None  # format v2, models only (section 11.2)
    card: ModelCard | None = None
    left_out: LeftOut | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.files, FileTable):
            object.__setattr__(self, "files", FileTable.of(self.files))

    @property
    def size(self) -> int:
        return _table(self).total_size()

    def extras(self) -> dict[str, object]:
        """The component's optional v2 members, as they are written."""
        out: dict[str, object] = {}
        for key, value in (("origin", self.origin), ("card", self.card), ("left_out", self.left_out)):
            if value is not None:
                out[key] = value.to_dict()
        return out


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    created: str
    hash_algorithm: str
    chunk_size: int
    payload_size: int
    chunks: Sequence[Chunk]  # a ChunkTable: given any sequence of Chunk, the constructor makes one
    components: tuple[Component, ...]
    expires: str | None = None
    format_version: int = 1
    base: BaseRef | None = None  # format v2: the version a delta takes its unchanged files from

    def __post_init__(self) -> None:
        if not isinstance(self.chunks, ChunkTable):
            object.__setattr__(self, "chunks", ChunkTable.of(self.chunks))
        _validate(self)

    # -- views -------------------------------------------------------------------------------

    def files(self) -> Iterator[FileEntry]:
        """Every file of the version, in manifest order (payload order for those in the payload)."""
        for component in self.components:
            yield from component.files

    def payload_files(self, *, min_size: int = 0) -> Iterator[FileEntry]:
        """The files whose bytes are in the payload, in payload order: all of them but a delta's
        files taken from its base (section 11.1). With ``min_size``, only those at least that large
        (picked from the size column: no entry is built for the others)."""
        for component in self.components:
            table = _table(component)
            if min_size:
                yield from (f for f in (table[i] for i, size in enumerate(table.sizes()) if size >= min_size)
                            if not f.from_base)
            elif table.from_base_count():
                yield from (f for f in table if not f.from_base)
            else:
                yield from table

    def base_files(self) -> Iterator[FileEntry]:
        """A delta's files taken from its base (section 11.1); none for a full bundle."""
        for component in self.components:
            if _table(component).from_base_count():
                yield from (f for f in component.files if f.from_base)

    @property
    def is_delta(self) -> bool:
        return self.base is not None

    def chunk(self, name: str) -> Chunk | None:
        """The chunk named ``name`` (its name gives its index: chunk_name), or None."""
        index = int(name[:5]) if len(name) == 9 and name[:5].isdigit() else -1
        return self.chunks[index] if 0 <= index < len(self.chunks) and chunk_name(index) == name else None

    def chunk_offset(self, index: int) -> int:
        return index * self.chunk_size

    @property
    def file_count(self) -> int:
        return sum(len(c.files) for c in self.components)

    def file_paths(self) -> Iterator[str]:
        """Every file's path, in manifest order (from the tables' path column: no entry is built)."""
        for component in self.components:
            yield from _table(component).paths()

    @property
    def file_bytes(self) -> int:
        """The size of every file of the version, summed (from the tables' size column: no entry is built)."""
        return sum(c.size for c in self.components)

    # -- bytes -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self._scalars() | {
            "chunks": [_chunk_dict(c) for c in self.chunks],
            "components": [{"kind": comp.kind, "name": comp.name, "files": [_file_dict(f) for f in comp.files]}
                           | comp.extras() for comp in self.components],
        }

    def _scalars(self) -> dict[str, Any]:
        """Every top-level member but ``chunks`` and ``components``."""
        out: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "bundle": {"name": self.name, "version": self.version},
            "created": self.created,
            "hash_algorithm": self.hash_algorithm,
            "chunk_size": self.chunk_size,
            "payload_size": self.payload_size,
        }
        if self.expires is not None:
            out["expires"] = self.expires
        if self.base is not None:
            out["base"] = self.base.to_dict()
        return out

    def to_bytes(self) -> bytes:
        """Exactly ``canonical_json(self.to_dict())``, written a piece at a time (see _write_object)."""
        out = io.BytesIO()
        self._write(out.write)
        return out.getvalue()  # BytesIO hands over its buffer: no second copy of the JSON

    def encodes_to(self, data: bytes) -> bool:
        """Whether :meth:`to_bytes` would give exactly ``data``: compared as it is written, without
        making the bytes (at the caps, another 32 MiB), and given up at the first difference."""
        same = _Same(data)
        try:
            self._write(same.write)
        except _Differs:
            return False
        return same.at == len(data)

    def _write(self, write: Write) -> None:
        members: dict[str, object] = self._scalars() | {"chunks": None, "components": None}
        _write_object(write, members, {"chunks": partial(_write_chunks, write, self.chunks),
                                       "components": partial(_write_components, write, self.components)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse verified manifest bytes; refuse anything that is not canonical and well-formed."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise UnsafeContentError(
                f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte cap", subject="manifest.json"
            )
        _check_container_counts(data)
        # Streamed: the chunk and file lists go, an entry at a time, straight into the model's tables,
        # so neither json's tree of the whole manifest (about 110 MiB at the caps) nor its text is ever
        # built. What nests deeper than the stack ends in RecursionError, turned into the message below.
        streams = _Streams()
        raw = parse_json_streamed(data, streams=streams.patterns(), source="manifest.json", error=UnsafeContentError,
                                  invalid="manifest is not valid JSON: {detail}",
                                  number="manifest holds a non-integer number {text!r}",
                                  deep="manifest JSON is nested too deeply")
        manifest = cls._build(raw)
        del raw, streams
        if not manifest.encodes_to(data):
            raise UnsafeContentError(
                "manifest is not in canonical form (sorted keys, no whitespace, RFC 8785)", subject="manifest.json"
            )
        return manifest

    @classmethod
    def from_dict(cls, raw: object) -> Manifest:
        """The manifest in a parsed JSON value, refused with the same words as :meth:`from_bytes`."""
        return cls._build(_Streams().feed(raw))

    @classmethod
    def _build(cls, raw: object) -> Manifest:
        """The model from a parsed value whose chunk and file lists are already sinks (_Streams);
        every check in the order of docs/format.md, "Rules a verifier enforces"."""
        top = _obj(raw, "manifest", required={"format", "format_version", "bundle", "created",
                                              "hash_algorithm", "chunk_size", "payload_size", "chunks",
                                              "components"}, optional={"expires", "base"})
        if top["format"] != FORMAT_NAME:
            raise UnsafeContentError(f"manifest format {top['format']!r} is not {FORMAT_NAME!r}", subject="format")
        version = _int(top["format_version"], "format_version")
        if version not in FORMAT_VERSIONS:
            # Worded for the admin of a site whose gapship is older than the bundle (section 9).
            raise UnsafeContentError(
                f"manifest format v{version}: upgrade gapship (this gapship reads formats "
                f"{', '.join(map(str, FORMAT_VERSIONS))})", subject="format_version",
            )
        bundle = _obj(top["bundle"], "bundle", required={"name", "version"})
        base = None
        if "base" in top:
            raw_base = _obj(top["base"], "base", required={"name", "version", "manifest_digest"})
            base = BaseRef(_str(raw_base["name"], "base.name"), _str(raw_base["version"], "base.version"),
                           _str(raw_base["manifest_digest"], "base.manifest_digest"))
        chunks = _streamed(top["chunks"], "chunks", MAX_CHUNKS, _ChunkSink)
        comps = _streamed(top["components"], "components", MAX_COMPONENTS, _ComponentSink)
        return cls(
            name=_str(bundle["name"], "bundle.name"),
            version=_str(bundle["version"], "bundle.version"),
            created=_str(top["created"], "created"),
            expires=_str(top["expires"], "expires") if "expires" in top else None,
            hash_algorithm=_str(top["hash_algorithm"], "hash_algorithm"),
            chunk_size=_int(top["chunk_size"], "chunk_size"),
            payload_size=_int(top["payload_size"], "payload_size"),
            chunks=chunks.result(),
            components=comps.result(),
            format_version=version,
            base=base,
        )


# -- canonical bytes, a piece at a time (docs/format.md, section 4.1) -----------------------------------

# canonical_json(to_dict()) held the manifest as a dict tree, a str and bytes at once: for 200,000
# files ("Limits") about 30 MB of JSON three times over, at the peak of every build and of every
# from_bytes check. Canonical JSON composes: an object is ``{``, its ``key:value`` members in key
# order joined by ``,``, then ``}``; a list likewise. So the same bytes are written a batch of entries
# at a time (tests/installer/formats/test_manifest.py holds them to canonical_json(to_dict())), into a
# buffer (to_bytes) or against the bytes they must equal (encodes_to).
_BATCH = 1000  # entries encoded per json.dumps call: small dicts in flight, few Python-level calls
Write = Callable[[bytes], object]


def _chunk_dict(c: Chunk) -> dict[str, object]:
    return {"name": c.name, "size": c.size, "hash": c.hash}


def _file_dict(f: FileEntry) -> dict[str, object]:
    where: dict[str, object] = {"source": FROM_BASE} if f.from_base else {"offset": f.offset}
    return {"path": f.path, "size": f.size, "mode": f.mode, "hash": f.hash} | where


class _Differs(Exception):
    """encodes_to's signal: the bytes written so far already differ."""


class _Same:
    """A ``write`` that compares what it is given with ``data`` at the same place instead of keeping it."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.at = 0

    def write(self, piece: bytes) -> None:
        end = self.at + len(piece)
        if self.data[self.at:end] != piece:
            raise _Differs
        self.at = end


def _write_object(write: Write, members: dict[str, object], writers: Mapping[str, Callable[[], None]]) -> None:
    """``members`` as one canonical JSON object; the values of the keys in ``writers`` written by them."""
    write(b"{")
    for i, name in enumerate(sorted(members)):
        write(b"," if i else b"")
        write(canonical_json(name) + b":")
        if name in writers:
            writers[name]()
        else:
            write(canonical_json(members[name]))
    write(b"}")


def _json_string(text: str) -> bytes:
    """``canonical_json(text)``; without the encoder for the usual string, which needs no escape."""
    return b'"' + text.encode("utf-8") + b'"' if _PLAIN.fullmatch(text) else canonical_json(text)


_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')  # what canonical JSON writes between quotes as it is


def _write_batches(write: Write, count: int, entry: Callable[[int], bytes]) -> None:
    """A JSON list of ``count`` entries, ``entry(i)`` the canonical bytes of each, joined a batch at a time."""
    write(b"[")
    for start in range(0, count, _BATCH):
        write(b"," if start else b"")
        write(b",".join(entry(i) for i in range(start, min(start + _BATCH, count))))
    write(b"]")


def _write_chunks(write: Write, chunks: Sequence[Chunk]) -> None:
    """The chunk list, each entry written from the table's columns in key order (hash, name, size)."""
    table = chunks if isinstance(chunks, ChunkTable) else ChunkTable.of(chunks)
    hashes, names, sizes = table._hashes, table._names, table._sizes

    def entry(i: int) -> bytes:
        name = names.get(i)
        return b'{"hash":%s,"name":%s,"size":%d}' % (
            _json_string(hashes[i]), _json_string(name) if name is not None else b'"%05d.bin"' % i, sizes[i])

    _write_batches(write, len(table), entry)


def _write_files(write: Write, files: Sequence[FileEntry]) -> None:
    """A component's file list, written from its columns in key order (hash, mode, offset, path, size)."""
    table = files if isinstance(files, FileTable) else FileTable.of(files)
    hashes, paths, sizes, modes, offsets = table._hashes, table._paths, table._sizes, table._modes, table._offsets
    base = table._base

    def entry(i: int) -> bytes:
        if i in base:  # keys in order: hash, mode, path, size, source (section 11.1)
            return b'{"hash":%s,"mode":%d,"path":%s,"size":%d,"source":"base"}' % (
                _json_string(hashes[i]), modes[i], _json_string(paths[i]), sizes[i])
        return b'{"hash":%s,"mode":%d,"offset":%d,"path":%s,"size":%d}' % (
            _json_string(hashes[i]), modes[i], offsets[i], _json_string(paths[i]), sizes[i])

    _write_batches(write, len(table), entry)


def _write_components(write: Write, components: Sequence[Component]) -> None:
    write(b"[")
    for i, comp in enumerate(components):
        write(b"," if i else b"")
        _write_object(write, {"kind": comp.kind, "name": comp.name, "files": None} | comp.extras(),
                      {"files": partial(_write_files, write, comp.files)})
    write(b"]")


# -- the chunk and file lists as columns (docs/format.md, "Limits") -----------------------------------
#
# A manifest may list 100,000 chunks and 200,000 files. As objects (a Chunk or FileEntry with its own
# strings and integers) they took about 80 MiB at those caps; as columns (sizes and offsets in arrays,
# digests as bytes, paths as strings) about 25. A table is a read-only sequence that makes the entry
# objects on access, so callers see the same Chunk and FileEntry values as before. A column holds only
# what it can hold exactly: a hash that is not lower-case hex of the first hash's length, or a chunk
# name other than the one its index gives, is kept aside as written, so the checks of _validate, run
# after the tables are built, see every value as it was and refuse it in their own words.


class _Hashes:
    """Hex digests by index, kept as bytes; one that is not lower-case hex of the width is kept as written."""

    __slots__ = ("width", "blob", "odd", "count")

    def __init__(self) -> None:
        self.width = 0  # bytes per digest, set by the first well-formed one
        self.blob = bytearray()
        self.odd: dict[int, str] = {}
        self.count = 0

    def append(self, value: str) -> None:
        raw = _digest_bytes(value)
        if raw is not None and not self.width:
            self.width = len(raw)
            self.blob = bytearray(self.width * self.count)  # room for the odd ones before it
        if raw is None or len(raw) != self.width:
            self.odd[self.count] = value
            raw = bytes(self.width)
        self.blob += raw
        self.count += 1

    def __getitem__(self, index: int) -> str:
        odd = self.odd.get(index)
        if odd is not None:
            return odd
        return self.blob[index * self.width:(index + 1) * self.width].hex()

    def same(self, other: _Hashes) -> bool:
        return (self.count == other.count and self.odd == other.odd
                and (self.blob == other.blob or all(self[i] == other[i] for i in range(self.count))))


def _digest_bytes(value: str) -> bytes | None:
    """``value`` as bytes when it is exactly lower-case hex (what ``bytes.hex`` gives back), else None."""
    if not value or len(value) % 2:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return None
    return raw if raw.hex() == value else None


def _position(index: int, length: int) -> int:
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError("table index out of range")
    return index


Row = TypeVar("Row")


class _Rows(Sequence[Row]):
    """What the column tables share: a row made on demand (``_row``), indexing and slicing as a
    tuple's, and equality with any sequence of the same rows."""

    __slots__ = ()

    def _row(self, i: int) -> Row:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Row: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Row, ...]: ...

    def __getitem__(self, index: int | slice) -> Row | tuple[Row, ...]:
        if isinstance(index, slice):
            return tuple(self._row(i) for i in range(*index.indices(len(self))))
        return self._row(_position(index, len(self)))

    def _same_columns(self, other: object) -> bool | None:
        """Compare with a table of the same kind column by column; None for anything else."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        same = self._same_columns(other)
        if same is not None:
            return same
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))


class ChunkTable(_Rows[Chunk]):
    """The chunk list: sizes in an array, digests as bytes, names from their index (chunk_name)."""

    __slots__ = ("_sizes", "_hashes", "_names")

    def __init__(self) -> None:
        self._sizes = array("Q")
        self._hashes = _Hashes()
        self._names: dict[int, str] = {}  # only names other than chunk_name(index)

    @classmethod
    def of(cls, chunks: Iterable[Chunk]) -> ChunkTable:
        table = cls()
        for c in chunks:
            table.append(c.name, c.size, c.hash)
        return table

    def append(self, name: str, size: int, hash: str) -> None:
        index = len(self._sizes)
        if name != chunk_name(index):
            self._names[index] = name
        self._sizes.append(size)
        self._hashes.append(hash)

    def __len__(self) -> int:
        return len(self._sizes)

    def _row(self, i: int) -> Chunk:
        return Chunk(self._names.get(i) or chunk_name(i), self._sizes[i], self._hashes[i])

    def __iter__(self) -> Iterator[Chunk]:
        names, hashes = self._names, self._hashes
        for i, size in enumerate(self._sizes):
            yield Chunk(names.get(i) or chunk_name(i), size, hashes[i])

    def _same_columns(self, other: object) -> bool | None:
        if isinstance(other, ChunkTable):
            return self._sizes == other._sizes and self._names == other._names and self._hashes.same(other._hashes)
        return None

    def __repr__(self) -> str:
        return f"ChunkTable({len(self)} chunks)"


class FileTable(_Rows[FileEntry]):
    """One component's files: paths as strings, sizes, modes and offsets in arrays, digests as bytes."""

    __slots__ = ("_paths", "_sizes", "_modes", "_offsets", "_hashes", "_base")

    def __init__(self) -> None:
        self._paths: list[str] = []
        self._sizes = array("Q")
        self._modes = array("Q")
        self._offsets = array("Q")
        self._hashes = _Hashes()
        self._base: set[int] = set()  # indices of the files taken from a delta's base (section 11.1)

    @classmethod
    def of(cls, files: Iterable[FileEntry]) -> FileTable:
        table = cls()
        for f in files:
            table.append(f.path, f.size, f.mode, f.hash, f.offset, from_base=f.from_base)
        return table

    def append(self, path: str, size: int, mode: int, hash: str, offset: int, *, from_base: bool = False) -> None:
        if from_base:
            self._base.add(len(self._paths))
            offset = 0
        self._paths.append(path)
        self._sizes.append(size)
        self._modes.append(mode)
        self._offsets.append(offset)
        self._hashes.append(hash)

    def sizes(self) -> Sequence[int]:
        return self._sizes

    def from_base_count(self) -> int:
        return len(self._base)

    def paths(self) -> Sequence[str]:
        return self._paths

    def total_size(self) -> int:
        return sum(self._sizes)

    def __len__(self) -> int:
        return len(self._paths)

    def _row(self, i: int) -> FileEntry:
        return FileEntry(self._paths[i], self._sizes[i], self._modes[i], self._hashes[i], self._offsets[i],
                         i in self._base)

    def __iter__(self) -> Iterator[FileEntry]:
        hashes, base = self._hashes, self._base
        for i, (path, size, mode, offset) in enumerate(zip(self._paths, self._sizes, self._modes, self._offsets)):
            yield FileEntry(path, size, mode, hashes[i], offset, i in base)

    def _same_columns(self, other: object) -> bool | None:
        if isinstance(other, FileTable):
            return (self._paths == other._paths and self._sizes == other._sizes and self._modes == other._modes
                    and self._offsets == other._offsets and self._base == other._base
                    and self._hashes.same(other._hashes))
        return None

    def __repr__(self) -> str:
        return f"FileTable({len(self)} files)"


def _table(comp: Component) -> FileTable:
    """A component's files as the table its constructor made of them."""
    assert isinstance(comp.files, FileTable)
    return comp.files


# -- the lists, streamed into the tables as they are parsed ------------------------------------------
#
# A sink stands where the parser found a list (kit.parse_json_streamed, or _Streams.feed for a value
# parsed whole). Each takes one entry at a time and checks it with the readers below, as from_dict
# did; it keeps the first refusal for Manifest._build to raise where from_dict raised it, and from then
# on, or past its cap, only counts, so a hostile list costs nothing it keeps.


# A canonical chunk or file entry, exactly: keys in order, no whitespace, strings without an escape,
# integers without a sign, fraction or leading zero and at most 16 digits. Its value is read off the
# groups (kit.ArraySink); anything else is parsed by json and read by _chunk and _file as before.
_STRING = rb'"([^"\\\x00-\x1f]*)"'
_INTEGER = rb"(0|[1-9][0-9]{0,15})"
_CHUNK_RE = re.compile(rb'\{"hash":' + _STRING + rb',"name":' + _STRING + rb',"size":' + _INTEGER + rb"\}")
_FILE_RE = re.compile(rb'\{"hash":' + _STRING + rb',"mode":' + _INTEGER + rb',"offset":' + _INTEGER
                      + rb',"path":' + _STRING + rb',"size":' + _INTEGER + rb"\}")


class _ChunkSink:
    fast = _CHUNK_RE

    def __init__(self) -> None:
        self.count = 0
        self.error: UnsafeContentError | None = None
        self.table = ChunkTable()

    def add_match(self, match: re.Match[bytes]) -> None:
        hash, name, size = match.group(1).decode(), match.group(2).decode(), int(match.group(3))
        if size > MAX_SAFE_INTEGER or self.error is not None or self.count >= MAX_CHUNKS:
            self.add({"hash": hash, "name": name, "size": size})
            return
        self.count += 1
        self.table.append(name, size, hash)

    def add(self, raw: Any) -> None:
        i, self.count = self.count, self.count + 1
        if self.error is not None or i >= MAX_CHUNKS:
            return
        try:
            self.table.append(*_chunk(raw, i))
        except UnsafeContentError as e:
            self.error = e

    def result(self) -> ChunkTable:
        if self.error is not None:
            raise self.error
        return self.table


class _FileSink:
    """The files of component ``index`` of ``owner``, up to the files the caps leave it."""

    fast = _FILE_RE

    def __init__(self, owner: _ComponentSink, index: int) -> None:
        self.owner, self.index = owner, index
        self.cap = 0 if owner.error is not None or index >= MAX_COMPONENTS else MAX_FILES - owner.total
        self.count = 0
        self.error: UnsafeContentError | None = None
        self.table = FileTable()

    def add_match(self, match: re.Match[bytes]) -> None:
        hash, mode, offset, path, size = match.groups()
        numbers = int(mode), int(offset), int(size)
        if max(numbers) > MAX_SAFE_INTEGER or self.error is not None or self.count >= self.cap:
            self.add({"hash": hash.decode(), "mode": numbers[0], "offset": numbers[1], "path": path.decode(),
                      "size": numbers[2]})
            return
        self.count += 1
        self.table.append(path.decode(), numbers[2], numbers[0], hash.decode(), numbers[1])

    def add(self, raw: Any) -> None:
        j, self.count = self.count, self.count + 1
        if self.error is not None or j >= self.cap:
            return
        try:
            path, size, mode, hash, offset, from_base = _file(raw, f"components[{self.index}].files[{j}]")
            self.table.append(path, size, mode, hash, offset, from_base=from_base)
        except UnsafeContentError as e:
            self.error = e


class _ComponentSink:
    def __init__(self) -> None:
        self.count = 0
        self.total = 0  # files in the components accepted so far
        self.error: UnsafeContentError | None = None
        self.components: list[Component] = []

    def add(self, raw: Any) -> None:
        k, self.count = self.count, self.count + 1
        if self.error is not None or k >= MAX_COMPONENTS:
            return
        where = f"components[{k}]"
        try:
            obj = _obj(raw, where, required={"kind", "name", "files"}, optional={"origin", "card", "left_out"})
            files = _streamed(obj["files"], f"{where}.files", MAX_FILES - self.total, _FileSink)
            if files.error is not None:
                raise files.error
            component = Component(_str(obj["kind"], f"{where}.kind"), _str(obj["name"], f"{where}.name"), files.table,
                                  **_component_extras(obj, where))
        except UnsafeContentError as e:
            self.error = e
            return
        self.total += files.count
        self.components.append(component)

    def result(self) -> tuple[Component, ...]:
        if self.error is not None:
            raise self.error
        return tuple(self.components)


Sink = TypeVar("Sink", _ChunkSink, _ComponentSink, _FileSink)


def _streamed(raw: object, where: str, cap: int, kind: type[Sink]) -> Sink:
    """The sink standing for the list at ``where``, refused like a list over ``cap`` entries; any
    other value is refused as from_dict refused it (``must be a list``)."""
    if not isinstance(raw, kind):
        _list(raw, where, cap)
        raise AssertionError("_Streams turns every list at this place into a sink")  # pragma: no cover
    if raw.count > cap:
        raise UnsafeContentError(f"manifest field {where} has {raw.count} entries, over the cap of {cap}", subject=where)
    return raw


class _Streams:
    """The sinks of one manifest: the patterns for parse_json_streamed, or :meth:`feed` for a value
    already parsed. The files of a component go to the components sink opened last (a second
    ``components`` key replaces the first, as json does)."""

    def __init__(self) -> None:
        self.components = _ComponentSink()

    def patterns(self) -> dict[tuple[str, ...], Callable[[tuple[str | int, ...]], ArraySink]]:
        return {("chunks",): lambda path: _ChunkSink(), ("components",): lambda path: self._components(),
                ("components", "*", "files"): lambda path: _FileSink(self.components, int(path[1]))}

    def _components(self) -> _ComponentSink:
        self.components = _ComponentSink()
        return self.components

    def feed(self, raw: object) -> object:
        """``raw`` with its chunk and file lists replaced by sinks that took their entries."""
        if not isinstance(raw, dict):
            return raw
        out = dict(raw)
        if isinstance(out.get("chunks"), list):
            chunks = _ChunkSink()
            for item in out["chunks"]:
                chunks.add(item)
            out["chunks"] = chunks
        if isinstance(out.get("components"), list):
            comps = self._components()
            for k, item in enumerate(out["components"]):
                if isinstance(item, dict) and isinstance(item.get("files"), list):
                    files = _FileSink(comps, k)
                    for entry in item["files"]:
                        files.add(entry)
                    item = {**item, "files": files}
                comps.add(item)
            out["components"] = comps
        return out


# -- parsing helpers (raise UnsafeContentError naming the field) -----------------------------------


def _check_container_counts(data: bytes) -> None:
    """Refuse, before parsing, bytes that hold more objects or lists than the caps allow.

    The count caps are otherwise checked as the lists stream in, one parsed element at a time:
    ``[{},{},...]`` declares 11 million files in 32 MiB, each of which would be parsed and counted
    first. Braces inside strings are not structure, so strings are removed before counting; this is
    an upper bound for the containers the parser would meet (docs/format.md, "Limits").
    """
    if data.count(b"{") <= MAX_OBJECTS and data.count(b"[") <= MAX_LISTS:
        return  # raw counts bound the structural ones: the usual case costs two fast scans
    bare = JSON_STRING.sub(b"", data)
    objects, lists = bare.count(b"{"), bare.count(b"[")
    if objects > MAX_OBJECTS or lists > MAX_LISTS:
        raise UnsafeContentError(
            f"manifest holds {objects} objects and {lists} lists, over the cap of {MAX_FILES} files, "
            f"{MAX_CHUNKS} chunks and {MAX_COMPONENTS} components", subject="manifest.json",
        )



# The kit's readers in the manifest's words: "manifest field X must be ...", unknown keys by repr.
# Bound once here: the manifest calls them five times for each of up to MAX_FILES files.
_FIELDS = Fields(UnsafeContentError, prefix="manifest field ", unknown=every_repr)
_obj = _FIELDS.mapping
_list = _FIELDS.array
_str = _FIELDS.string
_int = _FIELDS.integer


def _chunk(raw: object, i: int) -> tuple[str, int, str]:
    """A chunk entry's name, size and hash, each checked for its type."""
    where = f"chunks[{i}]"
    obj = _obj(raw, where, required={"name", "size", "hash"})
    return _str(obj["name"], f"{where}.name"), _int(obj["size"], f"{where}.size"), _str(obj["hash"], f"{where}.hash")


_FILE_KEYS = frozenset({"path", "size", "mode", "hash"})
_FILE_PLACES = frozenset({"offset", "source"})  # exactly one: in the payload, or from the base (11.1)


def _file(raw: object, where: str) -> tuple[str, int, int, str, int, bool]:
    """A file entry's path, size, mode, hash, offset and whether it comes from the base, each checked
    for its type."""
    obj = _obj(raw, where, required=_FILE_KEYS, optional=_FILE_PLACES)
    places = _FILE_PLACES & obj.keys()
    if len(places) != 1:
        detail = "has both offset and source" if places else "lacks offset (or, taken from a delta's base, source)"
        raise UnsafeContentError(f"manifest field {where} {detail}", subject=where)
    if "source" in obj:
        if _str(obj["source"], where, ".source") != FROM_BASE:
            raise UnsafeContentError(f"manifest field {where}.source must be {FROM_BASE!r}", subject=where)
        offset, from_base = 0, True
    else:
        offset, from_base = _int(obj["offset"], where, ".offset"), False
    return (_str(obj["path"], where, ".path"), _int(obj["size"], where, ".size"), _int(obj["mode"], where, ".mode"),
            _str(obj["hash"], where, ".hash"), offset, from_base)


def _component_extras(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A component's optional v2 members (section 11.2), each checked for its keys and types."""
    out: dict[str, Any] = {}
    if "origin" in obj:
        origin = _obj(obj["origin"], f"{where}.origin", required={"hf_repo"}, optional={"revision"})
        out["origin"] = Origin(_str(origin["hf_repo"], f"{where}.origin.hf_repo"),
                               _str(origin["revision"], f"{where}.origin.revision") if "revision" in origin else None)
    if "card" in obj:
        card = _obj(obj["card"], f"{where}.card", required=frozenset(), optional=set(CARD_FIELDS))
        out["card"] = ModelCard(**{k: _str(v, f"{where}.card.{k}") for k, v in card.items()})
    if "left_out" in obj:
        left = _obj(obj["left_out"], f"{where}.left_out", required={"files", "bytes"})
        out["left_out"] = LeftOut(_int(left["files"], f"{where}.left_out.files"),
                                  _int(left["bytes"], f"{where}.left_out.bytes"))
    return out


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
    if m.format_version not in FORMAT_VERSIONS:
        raise UnsafeContentError(f"manifest format v{m.format_version}: upgrade gapship", subject="format_version")
    _validate_v2(m)
    _validate_chunks(m)
    _validate_files(m)


def needed_format_version(*, base: BaseRef | None, components: Sequence[Component]) -> int:
    """The lowest format that can say this: 2 when anything of section 11 is used, else 1, so that a
    bundle that needs nothing new still installs at a site whose gapship reads only v1 (section 9)."""
    return 2 if _v2_feature(base, components) else 1


def _v2_feature(base: BaseRef | None, components: Sequence[Component]) -> str | None:
    """The first thing in the manifest that only format v2 has, named as a field, or None."""
    if base is not None:
        return "base"
    for k, comp in enumerate(components):
        if comp.kind == "sbom":
            return f"components[{k}].kind sbom"
        for key in comp.extras():
            return f"components[{k}].{key}"
        if _table(comp).from_base_count():
            return f"components[{k}].files[].source"
    return None


def _validate_v2(m: Manifest) -> None:
    """Section 11: what only v2 may hold, and the rules of its members."""
    feature = _v2_feature(m.base, m.components)
    if feature is not None and m.format_version < 2:
        raise UnsafeContentError(f"manifest field {feature} needs format_version 2", subject=feature)
    if m.base is not None:
        check_name(m.base.name, "base name")
        check_version(m.base.version)
        match = DIGEST_RE.fullmatch(m.base.manifest_digest)
        if not match or len(match.group(2)) != digest_hex_length(match.group(1)):
            raise UnsafeContentError(
                f"manifest field base.manifest_digest {m.base.manifest_digest!r} is not <sha256|sha384|sha512>:<hex>",
                subject="base.manifest_digest")
    for comp in m.components:
        where = f"component {comp.kind}/{comp.name}"
        if (comp.origin or comp.card or comp.left_out) and comp.kind != "model":
            raise UnsafeContentError(f"{where}: only a model has an origin, a card or left_out", subject=where)
        if comp.origin is not None:
            if not HF_REPO_RE.fullmatch(comp.origin.hf_repo) or ".." in comp.origin.hf_repo:
                raise UnsafeContentError(f"{where}: origin.hf_repo {comp.origin.hf_repo!r} is not an org/name repo id",
                                         subject=where)
            if comp.origin.revision is not None and not COMMIT_RE.fullmatch(comp.origin.revision):
                raise UnsafeContentError(f"{where}: origin.revision {comp.origin.revision!r} is not a 40-hex commit",
                                         subject=where)
        if comp.card is not None:
            for key, text in comp.card.to_dict().items():
                assert isinstance(text, str)
                if len(text) > MAX_CARD_TEXT:
                    raise UnsafeContentError(f"{where}: card.{key} is over {MAX_CARD_TEXT} characters", subject=where)
        if _table(comp).from_base_count() and m.base is None:
            raise UnsafeContentError(f"{where} takes files from a base, but the manifest names no base", subject=where)


def _check_hash(value: str, algorithm: str, where: str) -> None:
    if len(value) != digest_hex_length(algorithm) or value.strip("0123456789abcdef"):
        raise UnsafeContentError(f"{where} hash {value!r} is not a lower-case hex {algorithm} digest", subject=where)


def _validate_chunks(m: Manifest) -> None:
    chunks = m.chunks
    assert isinstance(chunks, ChunkTable)
    if not chunks:
        raise UnsafeContentError("manifest lists no chunks", subject="chunks")
    if len(chunks) > MAX_CHUNKS:
        raise UnsafeContentError(f"manifest lists {len(chunks)} chunks, over the cap of {MAX_CHUNKS}", subject="chunks")
    last = len(chunks) - 1
    hashes, sizes, names = chunks._hashes, chunks._sizes, chunks._names  # the columns: read in place, not as Chunks
    hex_length = digest_hex_length(m.hash_algorithm)
    for i in range(len(chunks)):
        name = names.get(i) or chunk_name(i)
        if i in names:
            raise UnsafeContentError(f"chunk {i} is named {name!r}, expected {chunk_name(i)!r}", subject=name)
        size = sizes[i]
        if not (size == m.chunk_size or (i == last and 0 < size < m.chunk_size)):
            raise UnsafeContentError(
                f"chunk {name} has size {size}; every chunk but the last must be exactly chunk_size "
                f"{m.chunk_size}, and the last between 1 and chunk_size", subject=name
            )
        if hashes.width * 2 != hex_length or i in hashes.odd:
            _check_hash(hashes[i], m.hash_algorithm, f"chunk {name}")
    total = m.chunk_size * last + sizes[last]
    if total != m.payload_size:
        raise UnsafeContentError(f"chunk sizes add up to {total}, not payload_size {m.payload_size}", subject="payload_size")
    if m.payload_size % BLOCK or m.payload_size < END_OF_ARCHIVE:
        raise UnsafeContentError(f"payload_size {m.payload_size} is not a whole tar archive", subject="payload_size")


def _validate_files(m: Manifest) -> None:
    kinds_seen: set[tuple[str, str]] = set()
    cursor = 0  # end of the previous file's data, padded to a block
    count = 0
    hex_length = digest_hex_length(m.hash_algorithm)
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
        table = _table(comp)  # the columns, read in place rather than as a FileEntry each
        hashes = table._hashes
        base = table._base
        for i, (path, size, mode, offset) in enumerate(zip(table._paths, table._sizes, table._modes, table._offsets)):
            count += 1
            if count > MAX_FILES:
                raise UnsafeContentError(f"manifest lists more than {MAX_FILES} files", subject="components")
            check_relative_path(path)
            if not path.startswith(root):
                raise UnsafeContentError(f"file {path!r} of {where} is not under {root}", subject=path)
            if mode not in ALLOWED_MODES:
                raise UnsafeContentError(f"file {path!r} has mode {mode:o}; only 644 and 755 are allowed", subject=path)
            if hashes.width * 2 != hex_length or i in hashes.odd:
                _check_hash(hashes[i], m.hash_algorithm, f"file {path!r}")
            if i in base:  # not in the payload: no place in it to check (section 11.1)
                if path == POLICY_PATH or path.startswith(PAYLOAD_ONLY_DIRS) or path in PAYLOAD_ONLY_FILES:
                    raise UnsafeContentError(f"{path} must be in the payload, not taken from the base",
                                             subject=path)
                continue
            header = offset - cursor
            if offset % BLOCK or not BLOCK <= header <= MAX_HEADER_REGION:
                raise UnsafeContentError(
                    f"file {path!r} has offset {offset}, which overlaps the previous file or leaves a "
                    f"header region of {header} bytes (allowed: {BLOCK}..{MAX_HEADER_REGION}, block-aligned)",
                    subject=path,
                )
            cursor = padded(offset + size)
    trailer = m.payload_size - cursor
    if not END_OF_ARCHIVE <= trailer <= END_OF_ARCHIVE + RECORD:
        raise UnsafeContentError(
            f"files end at {cursor}, leaving {trailer} bytes for the end of the archive in payload_size "
            f"{m.payload_size} (allowed: {END_OF_ARCHIVE}..{END_OF_ARCHIVE + RECORD})",
            subject="payload_size",
        )
    check_no_collisions(path for comp in m.components for path in _table(comp).paths())
    _check_safeguards(m)
    _check_sbom(m)


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


def _check_sbom(m: Manifest) -> None:
    """At most one sbom component, named ``sbom`` (section 11.3)."""
    sboms = [c for c in m.components if c.kind == "sbom"]
    if len(sboms) > 1 or any(c.name != "sbom" for c in sboms):
        raise UnsafeContentError("manifest may carry at most one sbom component, named 'sbom'", subject="components")
