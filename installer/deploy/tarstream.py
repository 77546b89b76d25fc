"""A strict reader for the tar headers in a gapship payload (docs/format.md, "Payload").

The installer never lets a tar library decide what to extract. It already knows, from the signed
manifest, where every file's data starts and ends; the bytes before each file's data are that file's
header region, which must hold exactly one regular-file member (optionally preceded by one pax
extended header) naming the same path, size and mode. Anything else (links, devices, directories,
GNU extensions, extra members, unknown pax keys) is refused.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass

from ..errors import UnsafeContentError
from ..formats.manifest import BLOCK, FileEntry, padded

REGULAR = tarfile.REGTYPE
PAX_HEADER = tarfile.XHDTYPE
# pax keys a gapship builder may write; anything else could change how other tools extract.
PAX_KEYS = frozenset({"path", "size", "mtime"})


@dataclass(frozen=True)
class Member:
    path: str
    size: int
    mode: int
    type: bytes


def check_header_region(region: bytes, expected: FileEntry) -> None:
    """Raise :class:`UnsafeContentError` unless ``region`` declares exactly ``expected``."""
    member = parse_header_region(region, subject=expected.path)
    problems = []
    if member.type != REGULAR:
        problems.append(f"type {member.type!r} is not a regular file")
    if member.path != expected.path:
        problems.append(f"names {member.path!r}")
    if member.size != expected.size:
        problems.append(f"declares size {member.size}, manifest says {expected.size}")
    if member.mode != expected.mode:
        problems.append(f"declares mode {member.mode:o}, manifest says {expected.mode:o}")
    if problems:
        raise UnsafeContentError(
            f"tar entry before {expected.path!r} differs from the manifest: {'; '.join(problems)}",
            subject=expected.path,
        )


def parse_header_region(region: bytes, *, subject: str) -> Member:
    if len(region) % BLOCK or not region:
        raise UnsafeContentError(f"tar header region before {subject!r} is not whole blocks", subject=subject)
    info = _header(region[:BLOCK], subject)
    pos = BLOCK
    pax: dict[str, str] = {}
    if info.type == PAX_HEADER:
        pax = _pax_records(region[pos:pos + info.size], subject)
        pos += padded(info.size)
        info = _header(region[pos:pos + BLOCK], subject)
        pos += BLOCK
    if pos != len(region):
        raise UnsafeContentError(f"extra tar entries before {subject!r}", subject=subject)
    if info.type in (PAX_HEADER, tarfile.XGLTYPE) or info.type in tarfile.GNU_TYPES:
        raise UnsafeContentError(f"tar entry before {subject!r} is an extension header of type {info.type!r}", subject=subject)
    path = pax.get("path", info.name)
    size = _pax_size(pax["size"], subject) if "size" in pax else info.size
    return Member(path=path, size=size, mode=info.mode, type=info.type)


def _header(block: bytes, subject: str) -> tarfile.TarInfo:
    if len(block) != BLOCK:
        raise UnsafeContentError(f"tar header before {subject!r} is cut short", subject=subject)
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
    except (tarfile.HeaderError, UnicodeDecodeError, ValueError) as e:
        raise UnsafeContentError(f"invalid tar header before {subject!r}: {e}", subject=subject) from None
    if block[257:263] != tarfile.POSIX_MAGIC[:6]:
        raise UnsafeContentError(f"tar header before {subject!r} is not POSIX ustar", subject=subject)
    return info


def _pax_records(data: bytes, subject: str) -> dict[str, str]:
    """Parse ``"<len> <key>=<value>\\n"`` records strictly; refuse unknown or repeated keys."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        record = data[pos:pos + length]
        if length <= space - pos or len(record) != length or not record.endswith(b"\n") or b"=" not in record:
            raise UnsafeContentError(f"malformed pax record before {subject!r}", subject=subject)
        key_b, _, value_b = record[space - pos + 1:-1].partition(b"=")
        try:
            key, value = key_b.decode("utf-8"), value_b.decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeContentError(f"pax record before {subject!r} is not UTF-8", subject=subject) from None
        if key not in PAX_KEYS or key in records:
            raise UnsafeContentError(f"pax key {key!r} before {subject!r} is not allowed or repeated", subject=subject)
        records[key] = value
        pos += length
    return records


def _pax_size(value: str, subject: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise UnsafeContentError(f"pax size {value!r} before {subject!r} is not a number", subject=subject)
    return int(value)


def is_zero(data: bytes | memoryview) -> bool:
    return not any(data)
