"""The parity layout, ``parity/layout.json`` (docs/format.md, section 12): a pure model.

No I/O here. The layout is a document of its own beside the manifest, never inside it: adding parity
to a bundle leaves ``manifest.json`` and its digest as they were, and a reader that predates parity
ignores ``parity/``. It binds the manifest by digest (and repeats its name, version, hash algorithm,
chunk size and chunk count), and is signed by the release role over its exact bytes
(``parity/signatures/``), accepted only through :func:`gapship.installer.trust.verify_parity`.

Which data chunks form a group is not listed but fixed by the format: data chunk ``i`` is block
``i // G`` of group ``i mod G`` (G groups); every field that follows from that is still written out,
and :meth:`ParityLayout.from_bytes` refuses a layout in which any of them does not add up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UnsafeContentError
from ..crypto.hashing import HASH_ALGORITHMS, digest_hex_length
from ..kit import Fields, canonical_json, parse_json
from .manifest import MAX_CHUNK_SIZE, MAX_CHUNKS, MIN_CHUNK_SIZE, check_name, check_version

FORMAT_NAME = "gapship-parity"
FORMAT_VERSION = 1
CODE = "reed-solomon-gf256-zfec"  # docs/format.md 12.3: GF(2^8), 0x11d, zfec's systematic Vandermonde matrix
PARITY = "parity"  # the folder in a bundle
LAYOUT = "layout.json"
MAX_BLOCKS = 256  # k + m per group
MAX_PARITY_CHUNKS = 50_000
MAX_LAYOUT_BYTES = 12 * 1024 * 1024  # 50,000 entries at about 160 bytes, under the 16 MiB side-file budget

_F = Fields(UnsafeContentError, prefix="parity layout field ")


def parity_name(index: int) -> str:
    return f"{index:05d}.bin"


@dataclass(frozen=True, slots=True)
class ParityChunk:
    """``parity/<name>``: row ``index`` (0..m-1) of group ``group``'s parity, block number k + index."""

    name: str
    group: int
    index: int
    size: int
    hash: str


@dataclass(frozen=True, slots=True)
class Group:
    k: int  # data chunks in the group
    m: int  # parity chunks in the group


def group_sizes(chunks: int, groups: int) -> list[int]:
    """k of each group when data chunk i belongs to group i mod ``groups``."""
    return [(chunks - g + groups - 1) // groups for g in range(groups)]


@dataclass(frozen=True)
class ParityLayout:
    name: str
    version: str
    manifest_digest: str  # "<algorithm>:<hex>" of the manifest bytes (verify --json's manifest_digest)
    hash_algorithm: str
    chunk_size: int
    chunks: int  # data chunks in the manifest
    groups: tuple[Group, ...]
    parity: tuple[ParityChunk, ...]  # group by group, row by row; parity[i] is parity/<parity_name(i)>
    code: str = CODE

    def __post_init__(self) -> None:
        _validate(self)

    # -- views ---------------------------------------------------------------------------------

    def group_of(self, data_index: int) -> int:
        return data_index % len(self.groups)

    def members(self, group: int) -> range:
        """The data chunk indexes of ``group``, in block order."""
        return range(group, self.chunks, len(self.groups))

    def parity_of(self, group: int) -> tuple[ParityChunk, ...]:
        start = sum(g.m for g in self.groups[:group])
        return self.parity[start:start + self.groups[group].m]

    def parity_chunk(self, name: str) -> ParityChunk | None:
        index = int(name[:5]) if len(name) == 9 and name[:5].isdigit() else -1
        return self.parity[index] if 0 <= index < len(self.parity) and parity_name(index) == name else None

    # -- bytes ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "bundle": {"name": self.name, "version": self.version},
            "manifest_digest": self.manifest_digest,
            "hash_algorithm": self.hash_algorithm,
            "chunk_size": self.chunk_size,
            "chunks": self.chunks,
            "code": self.code,
            "groups": [{"k": g.k, "m": g.m} for g in self.groups],
            "parity": [{"name": p.name, "group": p.group, "index": p.index, "size": p.size, "hash": p.hash}
                       for p in self.parity],
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> ParityLayout:
        """Parse and check a layout (exit 6 for anything malformed, not canonical or not adding up)."""
        if len(data) > MAX_LAYOUT_BYTES:
            raise UnsafeContentError(f"{PARITY}/{LAYOUT} is over {MAX_LAYOUT_BYTES} bytes", subject=LAYOUT)
        raw = parse_json(data, source=f"{PARITY}/{LAYOUT}", error=UnsafeContentError)
        layout = cls._from_dict(raw)
        if layout.to_bytes() != data:
            raise UnsafeContentError(f"{PARITY}/{LAYOUT} is not canonical JSON (sorted keys, no whitespace)",
                                     subject=LAYOUT)
        return layout

    @classmethod
    def _from_dict(cls, raw: object) -> ParityLayout:
        top = _F.mapping(raw, "layout", required={"format", "format_version", "bundle", "manifest_digest",
                                                  "hash_algorithm", "chunk_size", "chunks", "code", "groups",
                                                  "parity"})
        if top["format"] != FORMAT_NAME or top["format_version"] != FORMAT_VERSION:
            raise UnsafeContentError(f"{PARITY}/{LAYOUT} is not format {FORMAT_NAME!r} version {FORMAT_VERSION}"
                                     " (upgrade gapship?)", subject="format")
        bundle = _F.mapping(top["bundle"], "bundle", required={"name", "version"})
        groups = [_F.mapping(g, f"groups[{i}]", required={"k", "m"})
                  for i, g in enumerate(_F.array(top["groups"], "groups", MAX_CHUNKS))]
        parity = [_F.mapping(p, f"parity[{i}]", required={"name", "group", "index", "size", "hash"})
                  for i, p in enumerate(_F.array(top["parity"], "parity", MAX_PARITY_CHUNKS))]
        return cls(
            name=_F.string(bundle["name"], "bundle.name"), version=_F.string(bundle["version"], "bundle.version"),
            manifest_digest=_F.string(top["manifest_digest"], "manifest_digest"),
            hash_algorithm=_F.string(top["hash_algorithm"], "hash_algorithm"),
            chunk_size=_F.integer(top["chunk_size"], "chunk_size"), chunks=_F.integer(top["chunks"], "chunks"),
            code=_F.string(top["code"], "code"),
            groups=tuple(Group(k=_F.integer(g["k"], f"groups[{i}]", ".k"), m=_F.integer(g["m"], f"groups[{i}]", ".m"))
                         for i, g in enumerate(groups)),
            parity=tuple(ParityChunk(name=_F.string(p["name"], f"parity[{i}]", ".name"),
                                     group=_F.integer(p["group"], f"parity[{i}]", ".group"),
                                     index=_F.integer(p["index"], f"parity[{i}]", ".index"),
                                     size=_F.integer(p["size"], f"parity[{i}]", ".size"),
                                     hash=_F.string(p["hash"], f"parity[{i}]", ".hash"))
                         for i, p in enumerate(parity)),
        )


def _bad(message: str, subject: str) -> UnsafeContentError:
    return UnsafeContentError(f"{PARITY}/{LAYOUT} does not add up: {message}", subject=subject)


def _validate(layout: ParityLayout) -> None:
    """Every field checked, and every field that follows from another equal to it (section 12.2)."""
    check_name(layout.name, "bundle name")
    check_version(layout.version)
    if layout.code != CODE:
        raise UnsafeContentError(f"{PARITY}/{LAYOUT} uses code {layout.code!r}; this gapship knows {CODE!r}",
                                 subject="code")
    if layout.hash_algorithm not in HASH_ALGORITHMS:
        raise _bad(f"hash_algorithm {layout.hash_algorithm!r} is not one of {', '.join(HASH_ALGORITHMS)}",
                   "hash_algorithm")
    _check_digest(layout.manifest_digest, layout.hash_algorithm)
    if not MIN_CHUNK_SIZE <= layout.chunk_size <= MAX_CHUNK_SIZE:
        raise _bad(f"chunk_size {layout.chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}", "chunk_size")
    if not 1 <= layout.chunks <= MAX_CHUNKS:
        raise _bad(f"chunks {layout.chunks} is outside 1..{MAX_CHUNKS}", "chunks")
    _check_groups(layout.groups, layout.chunks)
    _check_parity(layout)


def _check_digest(value: str, algorithm: str) -> None:
    alg, _, hexdigest = value.partition(":")
    if alg != algorithm or len(hexdigest) != digest_hex_length(algorithm) or hexdigest.strip("0123456789abcdef"):
        raise _bad(f"manifest_digest {value!r} is not '{algorithm}:<lower-case hex>'", "manifest_digest")


def _check_groups(groups: Sequence[Group], chunks: int) -> None:
    if not 1 <= len(groups) <= chunks:
        raise _bad(f"{len(groups)} groups for {chunks} data chunks (1..{chunks})", "groups")
    for i, (group, k) in enumerate(zip(groups, group_sizes(chunks, len(groups)))):
        if group.k != k:
            raise _bad(f"groups[{i}].k is {group.k}, but {k} of the {chunks} data chunks fall in group {i} "
                       f"of {len(groups)}", f"groups[{i}]")
        if group.m < 1 or group.k + group.m > MAX_BLOCKS:
            raise _bad(f"groups[{i}] has k={group.k}, m={group.m}: need m >= 1 and k + m <= {MAX_BLOCKS}",
                       f"groups[{i}]")


def _check_parity(layout: ParityLayout) -> None:
    expected = [(g, j) for g, group in enumerate(layout.groups) for j in range(group.m)]
    if len(expected) > MAX_PARITY_CHUNKS:
        raise _bad(f"{len(expected)} parity chunks, over the cap of {MAX_PARITY_CHUNKS}", "parity")
    if len(layout.parity) != len(expected):
        raise _bad(f"parity lists {len(layout.parity)} chunks, but the groups' m add up to {len(expected)}", "parity")
    hex_length = digest_hex_length(layout.hash_algorithm)
    for i, (p, (g, j)) in enumerate(zip(layout.parity, expected)):
        where = f"parity[{i}]"
        if p.name != parity_name(i) or p.group != g or p.index != j:
            raise _bad(f"{where} is {p.name} (group {p.group}, index {p.index}); expected {parity_name(i)} "
                       f"(group {g}, index {j})", where)
        if p.size != layout.chunk_size:
            raise _bad(f"{where} is {p.size} bytes; every parity chunk is chunk_size ({layout.chunk_size})", where)
        if len(p.hash) != hex_length or p.hash.strip("0123456789abcdef"):
            raise _bad(f"{where}.hash is not a lower-case {layout.hash_algorithm} hex digest", where)
