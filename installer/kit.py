"""The document kit: how gapship reads every small file and every JSON or TOML document it is given.

Shared by the installer and the bundler, it owns four things:

- **canonical JSON** (:func:`canonical_json`), the one encoder whose bytes are signed and compared
  (docs/format.md, section 4.1);
- **one bounded file reader** (:func:`open_regular`, :func:`read_bounded`, :func:`read_optional`):
  it never follows a symlink unless told to, never blocks on a FIFO, refuses directories and devices,
  and checks a size cap before reading and while reading (a file can grow in between);
- **safe parsing** (:func:`parse_json`, :func:`parse_toml`): whatever the bytes hold (bad UTF-8,
  floats where a format has none, nesting deep enough to exhaust the stack, a document too big for
  memory), what comes out is a value or the caller's own error, with a one-line message naming the file;
- **typed field readers** (:class:`Fields`), parameterised by the caller's error class and wording, so
  each format keeps its own exit code and its own messages.

Nothing here decides anything: every refusal is turned into an exception by the caller (a
:data:`Refuse` callable, an error class and message templates), because which exit code a broken file
earns depends on what the file is (docs/cli.md, "Exit codes"). It imports nothing else from gapship.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

MAX_SAFE_INTEGER = 2**53 - 1  # RFC 8785 / I-JSON: larger integers are not portable
# Deepest nesting parse_json accepts by default. gapship's own documents nest at most 6 deep; 64
# leaves room for sigstore's trusted_root.json and stays far below the interpreter's recursion
# limit, so no later walk over a parsed value (json.dumps, a comparison) can exhaust the stack.
MAX_DEPTH = 64
# A JSON string (quotes, escapes); DOTALL so an escaped control byte cannot end the match early.
JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class ErrorClass(Protocol):
    """What a caller hands the kit to raise: a :class:`~.errors.GapshipError` subclass, or any
    exception class taking a message and a keyword ``subject``."""

    def __call__(self, message: str, *, subject: str | None = ...) -> Exception: ...


class Malformed(ValueError):
    """An :data:`ErrorClass` for callers that put a problem into their own words: ``str(e)`` is the
    message, and it is a ValueError, so an ``except ValueError`` that reported a parse error before
    reports this one the same way."""

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject


# -- canonical JSON ------------------------------------------------------------------------------------


def canonical_json(value: object) -> bytes:
    """Canonical bytes of ``value``: sorted keys, no whitespace, UTF-8 (RFC 8785 for our value set:
    strings, integers, booleans, lists and objects with ASCII keys)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


# -- the bounded reader --------------------------------------------------------------------------------

Reason = Literal["missing", "symlink", "not-regular", "too-large", "denied", "unreadable"]


@dataclass(frozen=True)
class Refusal:
    """Why a file was not read; the caller's :data:`Refuse` turns it into the caller's error.

    ``kind`` names what was found instead of a regular file ("directory", "FIFO", ...); ``size`` is the
    size the file had when it was refused as too large (``mode``: the type and mode of what was found
    instead of a regular file); ``oserror`` is the operating system's error,
    when there was one (for a directory, the ``IsADirectoryError`` a plain ``open`` would have raised,
    so a caller can keep the message it always gave)."""

    reason: Reason
    path: Path
    cap: int | None = None
    kind: str = ""
    size: int | None = None
    oserror: OSError | None = None
    mode: int | None = None  # st_mode of what was found instead of a regular file

    @property
    def strerror(self) -> str:
        """The operating system's words for it ("Permission denied"), or what was found instead."""
        if self.oserror is not None and self.oserror.strerror:
            return self.oserror.strerror
        if self.reason == "too-large":
            return f"over the {self.cap}-byte cap"
        return f"is a {self.kind}, not a regular file" if self.kind else self.reason


Refuse = Callable[[Refusal], Exception]


def refuse_as(error: ErrorClass, template: str = "cannot read {path}: {why}") -> Refuse:
    """The plain wording for a file named by the user: ``cannot read PATH: <why>``, as ``error``."""
    return lambda r: error(template.format(path=r.path, why=r.strerror), subject=str(r.path))


class _Missing(Exception):
    """read_optional's private signal: the file does not exist."""


def open_regular(path: Path, *, refuse: Refuse, follow_symlinks: bool = False) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading and return its descriptor (blocking) and ``fstat``; raise
    ``refuse(Refusal)`` unless it is a regular file.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer; ``O_NOCTTY``
    keeps a terminal device from becoming the controlling terminal; ``O_NOFOLLOW`` (unless
    ``follow_symlinks``) refuses a symlink as the last component. The type is decided on the open
    descriptor (``fstat``), never on the name, so nothing can be swapped in between. Devices are also
    refused before opening, where a plain ``stat`` shows them: opening some devices has effects."""
    nofollow = 0 if follow_symlinks else os.O_NOFOLLOW
    _refuse_device(path, refuse=refuse, follow_symlinks=follow_symlinks)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | nofollow)
    except FileNotFoundError as e:
        raise refuse(Refusal("missing", path, oserror=e)) from None
    except OSError as e:
        raise refuse(Refusal(_open_reason(e, follow_symlinks=follow_symlinks), path, oserror=e)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise refuse(_not_regular(path, st.st_mode)) from None
    os.set_blocking(fd, True)  # a regular file never blocks; later reads need no EAGAIN handling
    return fd, st


def _refuse_device(path: Path, *, refuse: Refuse, follow_symlinks: bool) -> None:
    try:
        mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
    except (OSError, ValueError):
        return  # os.open below reports it, with the caller's wording
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise refuse(_not_regular(path, mode))


def _open_reason(e: OSError, *, follow_symlinks: bool) -> Reason:
    if e.errno == errno.ELOOP and not follow_symlinks:
        return "symlink"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "denied"
    return "unreadable"


_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISLNK, "symlink"))


def _not_regular(path: Path, mode: int) -> Refusal:
    kind = next((name for test, name in _KINDS if test(mode)), "special file")
    # For a directory, the error a plain open() raises: callers that always reported that keep it.
    oserror = IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path)) if kind == "directory" else None
    return Refusal("not-regular", path, kind=kind, oserror=oserror, mode=mode)


def read_bounded(path: Path, *, cap: int, refuse: Refuse, follow_symlinks: bool = False) -> bytes:
    """The bytes of the regular file ``path``, at most ``cap`` of them; raise ``refuse(Refusal)``
    when it is missing, a symlink (unless ``follow_symlinks``), not a regular file, larger than
    ``cap`` (checked on ``fstat`` before reading, and again on what was read, reading at most
    ``cap + 1`` bytes), or cannot be read."""
    fd, st = open_regular(path, refuse=refuse, follow_symlinks=follow_symlinks)
    try:
        if st.st_size > cap:
            raise refuse(Refusal("too-large", path, cap=cap, size=st.st_size))
        data, failure = _read_at_most(fd, cap + 1, expected=st.st_size + 1)
    finally:
        os.close(fd)
    if failure is not None:
        raise refuse(Refusal("unreadable", path, oserror=failure))
    if len(data) > cap:
        raise refuse(Refusal("too-large", path, cap=cap, size=len(data)))
    return data


def read_optional(path: Path, *, cap: int, refuse: Refuse, follow_symlinks: bool = False) -> bytes | None:
    """Like :func:`read_bounded`, but None when ``path`` does not exist (and only then)."""
    def missing_is_none(refusal: Refusal) -> Exception:
        return _Missing() if refusal.reason == "missing" else refuse(refusal)

    try:
        return read_bounded(path, cap=cap, refuse=missing_is_none, follow_symlinks=follow_symlinks)
    except _Missing:
        return None


def list_bounded(folder: Path, *, cap: int, too_many: Callable[[int], Exception]) -> list[str]:
    """The names in ``folder``, sorted; raise ``too_many(cap)`` as soon as it holds more than ``cap``.

    ``os.listdir`` builds the whole list before a caller can count it, so a directory of a million
    entries costs a million strings; this reads at most ``cap + 1`` names. OSError (a missing folder,
    a file in its place) propagates for the caller to word."""
    names: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if len(names) == cap:
                raise too_many(cap)
            names.append(entry.name)
    return sorted(names)


_BLOCK = 64 * 1024


def _read_at_most(fd: int, limit: int, *, expected: int) -> tuple[bytes, OSError | None]:
    """Up to ``limit`` bytes. The first read asks for the size ``fstat`` reported (plus one, to see
    growth), so a file is read in one piece into one buffer; then blocks until EOF or ``limit``."""
    data = b""
    try:
        while len(data) < limit:
            block = os.read(fd, min(limit - len(data), max(expected - len(data), _BLOCK)))
            if not block:
                break
            data += block  # the first += of an empty bytes object keeps the block itself: no copy
    except OSError as e:
        return data, e
    return data, None


# -- parsing -------------------------------------------------------------------------------------------


class _Number(Exception):
    """parse_json's private signal: a number the format refuses (a float, NaN or Infinity)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _refuse_number(text: str) -> object:
    raise _Number(text)


def parse_json(data: bytes | str, *, source: str, error: ErrorClass,
               invalid: str = "{source} is not valid JSON: {detail}", number: str | None = None,
               deep: str = "{source} is nested too deeply to parse", large: str = "{source} is too large to parse",
               max_depth: int | None = MAX_DEPTH, subject: str | None = None,
               number_subject: str | None = None) -> Any:
    """The value in the UTF-8 JSON ``data``, or ``error(message, subject=...)``: never another exception.

    Each message is a template over ``{source}`` (and ``{detail}``, the parser's words, for ``invalid``;
    ``{text}``, the number as written, for ``number``). ``number`` given: floats, NaN and Infinity are
    refused with it; None: they are accepted. ``max_depth`` None: no depth limit beyond the
    interpreter's stack (for the manifest, whose size makes a scan costly and whose model refuses any
    nesting past its own before walking it). ``subject`` (default ``source``) is the error's subject;
    ``number_subject``, if given, that of a refused number."""
    fail = _failer(error, source=source, subject=subject)
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
        if number is None:
            value = json.loads(text)
        else:
            value = json.loads(text, parse_float=_refuse_number, parse_constant=_refuse_number)
    except _Number as e:
        message = (number or "").format(source=source, text=e.text)
        raise (error(message, subject=number_subject) if number_subject else fail(message)) from None
    except RecursionError:
        # json's decoder recurses per nesting level; the stack ends where the interpreter says.
        raise fail(deep.format(source=source)) from None
    except MemoryError:
        raise fail(large.format(source=source)) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, over-long integer literals
        raise fail(invalid.format(source=source, detail=e)) from None
    if max_depth is not None and _deeper_than(text, max_depth):
        raise fail(deep.format(source=source))
    return value


class ArraySink(Protocol):
    """Where :func:`parse_json_streamed` hands the elements of one streamed array, one at a time.

    A sink may also offer ``fast``, a compiled bytes pattern of its usual element written exactly
    (no whitespace, no escapes), and ``add_match(match)``: an element that pattern matches is handed
    over as the match instead of being parsed. The pattern must match only text whose JSON value the
    sink reads off the groups exactly (the manifest's canonical chunk and file entries)."""

    def add(self, value: Any) -> None: ...


# The path of a value in a document: object keys, and "*" for any index of an array.
Pattern = tuple[str, ...]
Path_ = tuple[str | int, ...]
OpenSink = Callable[[Path_], ArraySink]
# What parse_json_streamed builds whole: one value of an element or member, and the objects on the way
# to a streamed array. A canonical manifest's largest element is a few kilobytes (a path is at most 1024
# bytes, docs/format.md "Limits"); the caps keep a hostile one from costing more than a few megabytes.
MAX_STREAMED_VALUE = 64 * 1024  # bytes of one value parsed whole
MAX_WALKED_MEMBERS = 256  # members of one object on the way to a streamed array
_FIRST_SLICE = 2048  # most values fit: parse from a slice this long first, then from the whole cap
_NUMBER_TAIL = 8  # a number this close to a slice's end may have been cut short: parse a longer slice
_WS = re.compile(rb"[ \t\n\r]*")
_UTF8_BLOCK = 1024 * 1024


def _skip(data: bytes, at: int) -> int:
    """The first byte at or after ``at`` that is not JSON whitespace."""
    match = _WS.match(data, at)
    return match.end() if match else at


def _bytes_in(text: str, chars: int) -> int:
    """How many UTF-8 bytes the first ``chars`` characters of ``text`` take."""
    return chars if text.isascii() else len(text[:chars].encode("utf-8"))


def parse_json_streamed(data: bytes, *, streams: Mapping[Pattern, OpenSink], source: str, error: ErrorClass,
                        invalid: str = "{source} is not valid JSON: {detail}", number: str | None = None,
                        deep: str = "{source} is nested too deeply to parse",
                        large: str = "{source} is too large to parse", subject: str | None = None) -> Any:
    """:func:`parse_json` for a large document whose bulk is a few long arrays, without building them.

    Each array at a path in ``streams`` (keys, ``"*"`` for an array index: ``("components", "*",
    "files")``) is handed, element by element, to the sink ``streams[pattern](path)`` opens, and the
    sink stands in the tree where the list would have been; objects on the way to a streamed array are
    walked member by member, and every other value is parsed whole. So memory is the document's bytes
    and what the sinks keep, never the tree; the text is never decoded whole either (a single
    character outside the BMP makes a str four bytes per character). Semantics are json.loads':
    the same values, the last of two equal keys wins, the same errors with the same words, in
    document order; UTF-8 is checked over the whole document first, as decoding it would. Beyond
    json.loads, a value parsed whole may be at most :data:`MAX_STREAMED_VALUE` bytes and an
    object walked at most :data:`MAX_WALKED_MEMBERS` members: more is refused as ``invalid``."""
    fail = _failer(error, source=source, subject=subject)
    decoder = json.JSONDecoder(parse_float=_refuse_number, parse_constant=_refuse_number) if number is not None \
        else json.JSONDecoder()
    try:
        _check_utf8(data)
        return _Walker(data, getattr(decoder, "scan_once"), streams).document()  # the C scanner json.loads uses
    except _Number as e:
        raise fail((number or "").format(source=source, text=e.text)) from None
    except RecursionError:
        raise fail(deep.format(source=source)) from None
    except MemoryError:
        raise fail(large.format(source=source)) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise fail(invalid.format(source=source, detail=e)) from None


def _check_utf8(data: bytes) -> None:
    """Raise the UnicodeDecodeError ``data.decode("utf-8")`` would, decoding a block at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    for start in range(0, len(data), _UTF8_BLOCK):
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(data[start:start + _UTF8_BLOCK], final=start + _UTF8_BLOCK >= len(data))
        except UnicodeDecodeError as e:
            at = start - pending
            raise UnicodeDecodeError("utf-8", data, at + e.start, at + e.end, e.reason) from None


class _Walker:
    """The structure json.decoder's JSONObject and JSONArray parse, over bytes, with the C scanner
    parsing each value from a decoded slice; errors carry the words and positions json.loads gives."""

    def __init__(self, data: bytes, scan: Callable[[str, int], tuple[Any, int]],
                 streams: Mapping[Pattern, OpenSink]) -> None:
        self.data, self.scan, self.streams = data, scan, streams
        self.prefixes = {pattern[:i] for pattern in streams for i in range(len(pattern))}

    def document(self) -> Any:
        if self.data.startswith(codecs.BOM_UTF8):
            raise self.error("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0)
        value, end = self.value(_skip(self.data, 0), (), ())
        end = _skip(self.data, end)
        if end != len(self.data):
            raise self.error("Extra data", end)
        return value

    def value(self, at: int, path: Path_, pattern: Pattern) -> tuple[Any, int]:
        head = self.data[at:at + 1]
        if head == b"[" and pattern in self.streams:
            return self.array(at + 1, path, pattern, self.streams[pattern](path))
        if head == b"{" and pattern in self.prefixes:
            return self.object(at + 1, path, pattern)
        return self.whole(at)

    def object(self, end: int, path: Path_, pattern: Pattern) -> tuple[dict[str, Any], int]:
        data, members = self.data, dict[str, Any]()
        end = _skip(data, end)
        if data[end:end + 1] == b"}":
            return members, end + 1
        while True:
            if data[end:end + 1] != b'"':
                raise self.error("Expecting property name enclosed in double quotes", end)
            key, end = self.whole(end)
            end = _skip(data, end)
            if data[end:end + 1] != b":":
                raise self.error("Expecting ':' delimiter", end)
            value, end = self.value(_skip(data, end + 1), (*path, key), (*pattern, key))
            members[key] = value
            if len(members) > MAX_WALKED_MEMBERS:
                raise self.error(f"Object has more than {MAX_WALKED_MEMBERS} members", end)
            end = _skip(data, end)
            nextchar = data[end:end + 1]
            end += 1
            if nextchar == b"}":
                return members, end
            if nextchar != b",":
                raise self.error("Expecting ',' delimiter", end - 1)
            end = _skip(data, end)

    def array(self, end: int, path: Path_, pattern: Pattern, sink: ArraySink) -> tuple[ArraySink, int]:
        data = self.data
        fast: re.Pattern[bytes] | None = getattr(sink, "fast", None)
        inner = (*pattern, "*")
        walked = inner in self.streams or inner in self.prefixes
        end = _skip(data, end)
        if data[end:end + 1] == b"]":
            return sink, end + 1
        index = 0
        while True:
            match = fast.match(data, end) if fast is not None else None
            if match is not None:
                getattr(sink, "add_match")(match)
                end = match.end()
            else:
                value, end = self.value(end, (*path, index), inner) if walked else self.whole(end)
                sink.add(value)
            index += 1
            if data[end:end + 1] == b",":  # the usual separator, without whitespace before it
                end = _skip(data, end + 1)
                continue
            end = _skip(data, end)
            nextchar = data[end:end + 1]
            end += 1
            if nextchar == b"]":
                return sink, end
            if nextchar != b",":
                raise self.error("Expecting ',' delimiter", end - 1)
            end = _skip(data, end)

    def whole(self, at: int) -> tuple[Any, int]:
        """The value at byte ``at``, parsed whole by the C scanner from a slice of the text: first a
        short one, then one of MAX_STREAMED_VALUE bytes. A value the slice may have cut (an error at
        its very end or an unterminated string, or a number that ends too near it) is parsed again
        from the longer slice; one that does not fit that either is refused."""
        for width in (_FIRST_SLICE, MAX_STREAMED_VALUE):
            piece, _ = codecs.utf_8_decode(self.data[at:at + width], "strict", False)
            cut = at + width < len(self.data)
            try:
                value, end = self.scan(piece, 0)
            except StopIteration as e:  # no value where one must be; e.value is where (json's words for it)
                message, pos = "Expecting value", int(e.value)
            except json.JSONDecodeError as e:
                message, pos = e.msg, e.pos
            else:
                if cut and end > len(piece) - _NUMBER_TAIL:
                    continue
                return value, at + _bytes_in(piece, end)
            if cut and (pos >= len(piece) - _NUMBER_TAIL or message.startswith("Unterminated string")):
                continue
            raise self.error(message, at + _bytes_in(piece, pos))
        raise self.error(f"Value longer than {MAX_STREAMED_VALUE} bytes", at)

    def error(self, message: str, at: int) -> json.JSONDecodeError:
        """json's error at byte ``at``, with the line, column and character position it would give."""
        before = self.data[:at].decode("utf-8", "replace")
        return json.JSONDecodeError(message, before, len(before))


def parse_toml(data: bytes, *, source: str, error: ErrorClass, invalid: str = "{source}: not valid TOML: {detail}",
               deep: str = "{source} is nested too deeply to parse", large: str = "{source} is too large to parse",
               detail: Callable[[BaseException], str] = str, subject: str | None = None,
               max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The table in the UTF-8 TOML ``data``, or ``error(message, subject=...)``: never another exception.

    tomllib recurses in Python for each nested inline array or table, so a deep enough document ends in
    RecursionError; that, MemoryError, bad UTF-8 and bad TOML all become ``error``. A document that
    parses but nests deeper than ``max_depth`` is refused with ``deep`` too, as :func:`parse_json`
    does, so no later walk over the value can exhaust the stack. ``detail`` renders the parser's
    exception for ``{detail}``."""
    fail = _failer(error, source=source, subject=subject)
    try:
        value = tomllib.loads(data.decode("utf-8"))
    except RecursionError:
        raise fail(deep.format(source=source)) from None
    except MemoryError:
        raise fail(large.format(source=source)) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise fail(invalid.format(source=source, detail=detail(e))) from None
    if _value_deeper_than(value, max_depth):
        raise fail(deep.format(source=source))
    return value


def _value_deeper_than(value: object, limit: int) -> bool:
    """Whether a parsed value nests more than ``limit`` containers deep; iterative, so it cannot
    itself run out of stack."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _failer(error: ErrorClass, *, source: str, subject: str | None) -> Callable[[str], Exception]:
    return lambda message: error(message, subject=source if subject is None else subject)


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = frozenset(b"[{")


def _deeper_than(text: str, limit: int) -> bool:
    """Whether valid JSON ``text`` nests more than ``limit`` containers deep. Run after a successful
    parse, so strings are well-formed and removing them leaves only structure."""
    if text.count("[") + text.count("{") <= limit:
        return False  # fewer containers than the limit cannot nest deeper than it: the usual case
    depth = 0
    for byte in JSON_STRING.sub(b"", text.encode("utf-8", "surrogatepass")).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in _OPENERS else -1
        if depth > limit:
            return True
    return False


# -- typed field readers -------------------------------------------------------------------------------


def every_repr(names: Sequence[str]) -> str:
    """Unknown keys named ``'a', 'b'``: a key is untrusted text, and repr keeps a newline in it from
    splitting a one-line message."""
    return ", ".join(repr(k) for k in names)


def every_name(names: Sequence[str]) -> str:
    """Unknown keys named ``a, b``."""
    return ", ".join(names)


def first_key(names: Sequence[str]) -> str:
    """The first unknown key only, as ``key 'a'``."""
    return f"key {names[0]!r}"


@dataclass(frozen=True, slots=True)
class Fields:
    """Typed readers for the fields of one document format. Each raises ``error`` with a message
    ``{prefix}{where}{field} {must} ...`` in that format's own words; ``where`` (and ``field``, joined
    only when an error is raised: a manifest has five fields per file) names the field, and is the
    error's subject."""

    error: ErrorClass
    prefix: str = ""  # "manifest field "
    must: str = "must be"  # "is missing or not" for a spec's required tables
    an_object: str = "an object"  # "a JSON object", "a table"
    unknown: Callable[[Sequence[str]], str] = every_name

    def mapping(self, raw: object, where: str, *, required: Set[str] | None = None,
                optional: Set[str] = frozenset()) -> dict[str, Any]:
        """``raw`` as an object; with ``required``, holding all of those keys and none but ``optional``."""
        if not isinstance(raw, dict):
            raise self.error(f"{self.prefix}{where} {self.must} {self.an_object}", subject=where)
        if required is not None and raw.keys() != required:  # equal: decided without building sets
            self.keys(raw, where, required=required, optional=optional)
        return raw

    def keys(self, raw: Mapping[str, Any], where: str, *, required: Set[str] = frozenset(),
             optional: Set[str] = frozenset()) -> None:
        """Refuse a missing required key, then a key neither required nor optional."""
        missing = required - raw.keys()
        if missing:
            raise self.error(f"{self.prefix}{where} lacks {', '.join(sorted(missing))}", subject=where)
        unknown = raw.keys() - required - optional
        if unknown:
            raise self.error(f"{self.prefix}{where} has unknown {self.unknown(sorted(unknown))}", subject=where)

    def array(self, raw: object, where: str, cap: int | None = None) -> list[Any]:
        """``raw`` as a list of at most ``cap`` entries."""
        if not isinstance(raw, list):
            raise self.error(f"{self.prefix}{where} {self.must} a list", subject=where)
        if cap is not None and len(raw) > cap:
            raise self.error(f"{self.prefix}{where} has {len(raw)} entries, over the cap of {cap}", subject=where)
        return raw

    def string(self, raw: object, where: str, field: str = "", *, nonempty: bool = False) -> str:
        if not isinstance(raw, str) or (nonempty and not raw):
            raise self.error(f"{self.prefix}{where}{field} {self.must} a string", subject=where + field)
        return raw

    def integer(self, raw: object, where: str, field: str = "") -> int:
        """An integer in 0..2^53-1 (RFC 8785); never a bool."""
        if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= MAX_SAFE_INTEGER:
            raise self.error(f"{self.prefix}{where}{field} {self.must} an integer in 0..2^53-1", subject=where + field)
        return raw

    def strings(self, raw: object, where: str, *, described: str = "list of strings", nonempty: bool = False,
                item: Callable[[str], object] = bool, pattern: re.Pattern[str] | None = None,
                twice: str = "a value") -> tuple[str, ...]:
        """A list of strings, each passing ``item`` (default: non-empty) and matching ``pattern``,
        none twice; ``nonempty``: at least one. ``described`` names the type in the message."""
        if (not isinstance(raw, list) or not all(isinstance(v, str) and item(v) for v in raw)
                or (nonempty and not raw)):
            raise self.error(f"{self.prefix}{where} {self.must} a {described}", subject=where)
        if pattern is not None:
            for v in raw:
                if not pattern.fullmatch(v):
                    raise self.error(f"{self.prefix}{where}: {v!r} must match {pattern.pattern}", subject=where)
        if len(set(raw)) != len(raw):
            raise self.error(f"{self.prefix}{where} lists {twice} twice", subject=where)
        return tuple(raw)
