"""installer/formats/paths.py: the one-pass check for plain ASCII paths accepts exactly the paths the full rules
accept, and every path, on either route, gets the same verdict and wording as the rules as first
written (docs/format.md, "Paths"); the collision check, which now adds each directory once, refuses
the same lists with the same message as before."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gapship.installer.formats import paths
from gapship.installer.errors import UnsafeContentError
from gapship.installer.formats.paths import (
    MAX_COMPONENT_BYTES, MAX_DEPTH, MAX_PATH_BYTES, check_no_collisions, check_relative_path, collision_key,
)

SETTINGS = settings(max_examples=1000, deadline=None, derandomize=True, database=None)


def reference_problem(path: str) -> str | None:
    """The oracle: the rules one at a time, in order, as paths.py had them before its fast path."""
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
            return "has an empty, '.' or '..' component"
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            return f"a component is longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def verdict(path: str) -> str | None:
    """None if check_relative_path accepts ``path``, else its message."""
    try:
        check_relative_path(path)
    except UnsafeContentError as e:
        assert e.subject == path
        return e.message
    return None


def expected(path: str) -> str | None:
    problem = reference_problem(path)
    return None if problem is None else f"unsafe path {path!r}: {problem}"


def fast_accepts(path: str) -> bool:
    return len(path) <= MAX_PATH_BYTES and paths._PLAIN_PATH.fullmatch(path) is not None


def check(path: str) -> None:
    assert verdict(path) == expected(path)
    if fast_accepts(path):  # never accepts what the rules refuse...
        assert reference_problem(path) is None
    if path.isascii() and reference_problem(path) is None:  # ...and takes every valid ASCII path
        assert fast_accepts(path)


ANY_CHAR = st.characters(exclude_categories=[])  # control characters and lone surrogates too
COMPONENT = st.one_of(
    st.sampled_from(["", ".", "..", "...", ".a", "a.", "a", "A", " ", "~", "-", "a b", "[x]", "\\", "\x00", "\n",
                     "\x1f", "\x7f", "\x80", "\ud800", "\udcff", "e\u0301", "\u00e9", "\ufb01", "\U0001f600",
                     "a" * MAX_COMPONENT_BYTES, "a" * (MAX_COMPONENT_BYTES + 1),
                     "\u00e9" * (MAX_COMPONENT_BYTES // 2), "\u00e9" * (MAX_COMPONENT_BYTES // 2 + 1)]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    st.text(ANY_CHAR, max_size=6),
)
PATHS = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.lists(COMPONENT, max_size=MAX_DEPTH + 3).map("/".join),
    st.lists(COMPONENT, max_size=MAX_DEPTH + 3).map(lambda parts: "/" + "/".join(parts)),
)


@pytest.mark.slow  # hypothesis
@SETTINGS
@given(PATHS)
@example("models/tiny/d000/f00001.bin")
@example("a/./b")
@example("a//b")
@example("a/b/")
@example("../a")
@example("a/..")
def test_fast_path_and_full_check_agree(path: str) -> None:
    check(path)


# Paths of exactly MAX_PATH_BYTES (1024) and one byte more: five components of 200, and the rest.
AT_LIMIT = "/".join(["a" * 200] * 5 + ["a" * 19])
OVER_LIMIT = "/".join(["a" * 200] * 5 + ["a" * 20])
# The same in two-byte characters: far fewer than 1024 characters, so only the byte count can tell.
AT_LIMIT_UTF8 = "/".join(["\u00e9" * 127] * 4 + ["abcd"])
OVER_LIMIT_UTF8 = "/".join(["\u00e9" * 127] * 4 + ["abcde"])


@pytest.mark.parametrize(("path", "problem"), [
    ("/".join(["d"] * MAX_DEPTH), None),
    ("/".join(["d"] * (MAX_DEPTH + 1)), f"deeper than {MAX_DEPTH} components"),
    ("a" * MAX_COMPONENT_BYTES, None),
    ("a" * (MAX_COMPONENT_BYTES + 1), f"a component is longer than {MAX_COMPONENT_BYTES} bytes"),
    ("\u00e9" * (MAX_COMPONENT_BYTES // 2 + 1), f"a component is longer than {MAX_COMPONENT_BYTES} bytes"),
    (AT_LIMIT, None),
    (OVER_LIMIT, f"longer than {MAX_PATH_BYTES} bytes"),
    (AT_LIMIT_UTF8, None),
    (OVER_LIMIT_UTF8, f"longer than {MAX_PATH_BYTES} bytes"),
    ("a\\b", "contains a backslash"),
    ("a/\x7f", "contains a control character (NUL, newline, ...)"),
    ("a/\udcff", "contains a lone surrogate (not valid UTF-8)"),
    ("cafe\u0301", "not in Unicode NFC form"),
    ("caf\u00e9/\U0001f600", None),
])
def test_limits_and_refusals(path: str, problem: str | None) -> None:
    assert reference_problem(path) == problem  # the case is what it says it is
    assert verdict(path) == (None if problem is None else f"unsafe path {path!r}: {problem}")
    check(path)


def test_long_paths_are_the_size_they_claim() -> None:
    assert MAX_PATH_BYTES == 1024
    sizes = [len(p.encode()) for p in (AT_LIMIT, OVER_LIMIT, AT_LIMIT_UTF8, OVER_LIMIT_UTF8)]
    assert sizes == [1024, 1025, 1024, 1025]
    assert len(OVER_LIMIT_UTF8) < MAX_PATH_BYTES


def reference_collision(paths_: list[str]) -> str | None:
    """The oracle: check_no_collisions as first written, every directory prefix of every path."""
    seen: dict[str, str] = {}
    dirs: set[str] = set()
    for path in paths_:
        key = collision_key(path)
        other = seen.get(key)
        if other is not None:
            what = "duplicate" if other == path else f"collides with {other!r}"
            return f"unsafe path {path!r}: {what}"
        seen[key] = path
        parts = key.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for key, path in seen.items():
        if key in dirs:
            return f"unsafe path {path!r}: is a file and also a directory of another path"
    return None


def collision_verdict(paths_: list[str]) -> str | None:
    try:
        check_no_collisions(paths_)
    except UnsafeContentError as e:
        return e.message
    return None


# Few names, so that lists often repeat, nest or collide: case, NFKC (the ligature), NFC vs NFD.
NAME = st.sampled_from(["a", "A", "b", "\ufb01", "fi", "\u00e4", "a\u0308"])


@pytest.mark.slow  # hypothesis
@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.lists(st.lists(NAME, min_size=1, max_size=4).map("/".join), max_size=8))
@example(["a/b/c", "a"])
@example(["a", "a/b/c"])
@example(["a/b/x", "a/b/c", "A/b"])
def test_collision_check_agrees_with_the_first_version(paths_: list[str]) -> None:
    assert collision_verdict(paths_) == reference_collision(paths_)
