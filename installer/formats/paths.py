"""Rules for the relative paths a bundle may carry (docs/format.md, "Paths").

A path is accepted only if it is a plain relative POSIX path that lands at the same place on every
filesystem a site might use. Both the bundler (before it signs) and the installer (before it writes)
apply these rules, so a bundle that builds is a bundle that installs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from ..errors import UnsafeContentError

MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 32

# Paths that pass every rule of _path_problem, recognised in one pass: printable ASCII (always NFC,
# one byte a character) but '/' and '\\', in 1..MAX_DEPTH components of 1..MAX_COMPONENT_BYTES
# characters, none of them '.' or '..'. The byte cap is checked with len(). Anything else, valid or
# not, takes the full check, which alone words the refusal. A component holds no '/', so the match
# cannot backtrack across components: the time is linear in the path's length.
_COMPONENT = rf"(?!\.\.?(?:/|\Z))[ -.0-\[\]-~]{{1,{MAX_COMPONENT_BYTES}}}"
_PLAIN_PATH = re.compile(rf"(?:{_COMPONENT}/){{0,{MAX_DEPTH - 1}}}{_COMPONENT}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def check_relative_path(path: str) -> None:
    """Raise :class:`UnsafeContentError` unless ``path`` is a safe relative path."""
    if len(path) <= MAX_PATH_BYTES and _PLAIN_PATH.fullmatch(path):
        return  # the usual case: a manifest lists every file, and a model may have 100,000 of them
    problem = _path_problem(path)
    if problem is not None:
        raise UnsafeContentError(f"unsafe path {path!r}: {problem}", subject=path)


def _path_problem(path: str) -> str | None:
    """The first rule ``path`` breaks (docs/format.md, "Paths"), or None."""
    if not path:
        return "empty"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    if path.startswith("/"):
        return "absolute"
    if "\\" in path:
        return "contains a backslash"
    if _CONTROL.search(path):
        return "contains a control character (NUL, newline, ...)"
    if _SURROGATE.search(path):
        return "contains a lone surrogate (not valid UTF-8)"
    if not unicodedata.is_normalized("NFC", path):
        return "not in Unicode NFC form"
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        return f"deeper than {MAX_DEPTH} components"
    for part in parts:
        if part in ("", ".", ".."):
            return f"has an empty, '.' or '..' component"
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            return f"a component is longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def collision_key(path: str) -> str:
    """The key under which two paths would land on the same file on a case-insensitive or
    normalising filesystem (NFKC, then case-folded)."""
    return unicodedata.normalize("NFKC", path).casefold()


def check_no_collisions(paths: Iterable[str]) -> None:
    """Refuse duplicates, and paths that collide after normalisation or case folding, or that are
    both a file and a directory prefix of another path."""
    seen: dict[str, str] = {}
    dirs: set[str] = set()
    for path in paths:
        key = collision_key(path)
        other = seen.get(key)
        if other is not None:
            what = "duplicate" if other == path else f"collides with {other!r}"
            raise UnsafeContentError(f"unsafe path {path!r}: {what}", subject=path)
        seen[key] = path
        # Add the key's parent directories, nearest first, up to one already known: its own parents
        # are known too, so each directory is added once rather than once for every file under it.
        cut = key.rfind("/")
        while cut >= 0 and key[:cut] not in dirs:
            dirs.add(key[:cut])
            cut = key.rfind("/", 0, cut)
    for key, path in seen.items():
        if key in dirs:
            raise UnsafeContentError(
                f"unsafe path {path!r}: is a file and also a directory of another path", subject=path
            )
