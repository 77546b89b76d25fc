"""Rules for the relative paths a bundle may carry (docs/format.md, "Paths").

A path is accepted only if it is a plain relative POSIX path that lands at the same place on every
filesystem a site might use. Both the bundler (before it signs) and the installer (before it writes)
apply these rules, so a bundle that builds is a bundle that installs.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from .errors import UnsafeContentError

MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 32


def check_relative_path(path: str) -> None:
    """Raise :class:`UnsafeContentError` unless ``path`` is a safe relative path."""
    problem = _path_problem(path)
    if problem is not None:
        raise UnsafeContentError(f"unsafe path {path!r}: {problem}", subject=path)


def _path_problem(path: str) -> str | None:
    if not path:
        return "empty"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    if path.startswith("/"):
        return "absolute"
    if "\\" in path:
        return "contains a backslash"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "contains a control character (NUL, newline, ...)"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in path):
        return "contains a lone surrogate (not valid UTF-8)"
    if unicodedata.normalize("NFC", path) != path:
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
        parts = key.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for key, path in seen.items():
        if key in dirs:
            raise UnsafeContentError(
                f"unsafe path {path!r}: is a file and also a directory of another path", subject=path
            )
