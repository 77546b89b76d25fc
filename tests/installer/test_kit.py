"""The document kit (gapship.installer.kit): the one bounded reader refuses what is not a small regular
file without blocking or reading without end, the parsers turn any nesting into the caller's error,
canonical JSON keeps its bytes, and the field readers raise the class they are given.

Each test stages the hostile file for real in ``tmp_path`` (FIFOs, symlinks, sparse files); nothing
of ``os`` is mocked. Reads that could block run in a worker thread with a timeout, so a regression
fails the test instead of hanging the suite."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from gapship.installer.errors import GapshipError, HostError, IntegrityError, PolicyError, TrustError, UsageError
from gapship.installer.kit import (
    MAX_DEPTH,
    MAX_STREAMED_VALUE,
    MAX_WALKED_MEMBERS,
    Fields,
    Refusal,
    canonical_json,
    every_repr,
    first_key,
    list_bounded,
    parse_json,
    parse_json_streamed,
    parse_toml,
    read_bounded,
    read_optional,
    refuse_as,
)

T = TypeVar("T")
TIMEOUT = 10  # seconds; every read here returns in microseconds unless it blocks


class Refused(GapshipError):
    """The caller's error class in these tests: carries the refusal it was made from."""

    exit_code = 9

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.path}: {refusal.reason}: {refusal.strerror}", subject=str(refusal.path))
        self.refusal = refusal


def within_timeout(call: Callable[[], T]) -> T:
    """Run ``call`` in a worker thread; fail (not hang) if it has not returned in TIMEOUT seconds.
    A blocked os.open cannot be interrupted, so the worker is abandoned (a daemon thread) on failure."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).result(timeout=TIMEOUT)
    finally:
        pool.shutdown(wait=False)


def refused(path: Path, *, cap: int = 1024, follow_symlinks: bool = False) -> Refusal:
    with pytest.raises(Refused) as e:
        within_timeout(lambda: read_bounded(path, cap=cap, refuse=Refused, follow_symlinks=follow_symlinks))
    return e.value.refusal


# -- the bounded reader -----------------------------------------------------------------------------


def test_reads_a_small_regular_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello")
    assert read_bounded(tmp_path / "f", cap=5, refuse=Refused) == b"hello"


def test_rejects_fifo_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no writer would block a plain open() for ever."""
    os.mkfifo(tmp_path / "fifo")
    r = refused(tmp_path / "fifo")
    assert (r.reason, r.kind) == ("not-regular", "FIFO")


def test_rejects_fifo_behind_a_followed_symlink_without_blocking(tmp_path: Path) -> None:
    """Following a symlink (host files, options) still decides on the file it leads to."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    r = refused(tmp_path / "link", follow_symlinks=True)
    assert (r.reason, r.kind) == ("not-regular", "FIFO")


def test_rejects_dev_zero(tmp_path: Path) -> None:
    """/dev/zero never ends: refused as a device, not read up to the cap."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    r = refused(Path("/dev/zero"), follow_symlinks=True)
    assert (r.reason, r.kind) == ("not-regular", "character device")


def test_rejects_character_device_behind_a_symlink(tmp_path: Path) -> None:
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null here")
    (tmp_path / "site.toml").symlink_to("/dev/null")
    r = refused(tmp_path / "site.toml", follow_symlinks=True)
    assert (r.reason, r.kind) == ("not-regular", "character device")


def test_rejects_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert refused(tmp_path / "link").reason == "symlink"


def test_rejects_dangling_symlink(tmp_path: Path) -> None:
    """A link to nothing is a link, not a missing file: it must not read as "absent"."""
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert refused(tmp_path / "link").reason == "symlink"
    with pytest.raises(Refused):
        read_optional(tmp_path / "link", cap=10, refuse=Refused)


def test_rejects_dangling_symlink_when_following(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert refused(tmp_path / "link", follow_symlinks=True).reason == "missing"


def test_rejects_file_over_the_cap_before_reading_it(tmp_path: Path) -> None:
    """A sparse 64 GiB file costs nothing to make, and is refused on its size, unread."""
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(64 * 1024**3)
    r = refused(huge, cap=1024)
    assert (r.reason, r.cap, r.size) == ("too-large", 1024, 64 * 1024**3)


def test_rejects_file_one_byte_over_the_cap(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 11)
    assert refused(tmp_path / "f", cap=10).reason == "too-large"
    assert read_bounded(tmp_path / "f", cap=11, refuse=Refused) == b"x" * 11


def test_rejects_directory(tmp_path: Path) -> None:
    """Refused as not regular, carrying the IsADirectoryError a plain open() raised, for old wording."""
    (tmp_path / "d").mkdir()
    r = refused(tmp_path / "d")
    assert (r.reason, r.kind) == ("not-regular", "directory")
    assert isinstance(r.oserror, IsADirectoryError) and r.strerror == "Is a directory"


def test_missing_file_is_refused_or_none(tmp_path: Path) -> None:
    assert refused(tmp_path / "absent").reason == "missing"
    assert read_optional(tmp_path / "absent", cap=10, refuse=Refused) is None


_DENIED_PROBE = """
import sys
from pathlib import Path
from gapship.installer.kit import read_bounded

class Refused(Exception):
    pass

def refuse(r):
    print(r.reason, r.strerror, sep="|")
    return Refused()

try:
    read_bounded(Path(sys.argv[1]), cap=1024, refuse=refuse)
except Refused:
    pass
"""


def test_rejects_unreadable_file_as_denied(tmp_path: Path) -> None:
    """As root (CI), read in a child with every capability dropped (setpriv): the mode binds it."""
    (tmp_path / "secret").write_bytes(b"x")
    (tmp_path / "secret").chmod(0)
    if os.geteuid() != 0:
        r = refused(tmp_path / "secret")
        assert r.reason == "denied" and r.strerror == "Permission denied"
        return
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv(1) is needed to drop root's capabilities (util-linux)")
    done = subprocess.run(["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--", sys.executable, "-c",
                           _DENIED_PROBE, str(tmp_path / "secret")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "denied|Permission denied\n"


def test_refuse_as_gives_the_plain_wording(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match=r"cannot read .*fifo: is a FIFO, not a regular file$"):
        within_timeout(lambda: read_bounded(tmp_path / "fifo", cap=10, refuse=refuse_as(UsageError)))


def test_site_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Through a real caller: ``--site-config FIFO`` used to hang the command."""
    from gapship.installer.formats.site import load_site

    os.mkfifo(tmp_path / "site.toml")
    with pytest.raises(UsageError, match="is a FIFO, not a regular file"):
        within_timeout(lambda: load_site(tmp_path / "site.toml"))


def test_host_state_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    from gapship.installer.host.state import HostState

    state = HostState.for_prefix(tmp_path)
    state.directory.mkdir()
    os.mkfifo(state.path)
    with pytest.raises(HostError, match="is a FIFO, not a regular file"):
        within_timeout(state.load)


# -- parsing --------------------------------------------------------------------------------------


def test_rejects_json_nested_100000_deep_with_the_error_class() -> None:
    """json's decoder recurses per level: without the kit this is a RecursionError (exit 1)."""
    for deep in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        with pytest.raises(TrustError, match="^doc.json is nested too deeply to parse$"):
            parse_json(deep, source="doc.json", error=TrustError)


def test_rejects_json_deeper_than_the_limit_but_within_the_stack() -> None:
    """Depth the interpreter could parse, but that a later walk (json.dumps) might not survive."""
    deep = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    with pytest.raises(PolicyError, match="nested too deeply"):
        parse_json(deep, source="doc.json", error=PolicyError)
    ok = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_json(ok, source="doc.json", error=PolicyError) is not None
    # brackets inside strings are not structure
    assert parse_json(b'["' + b"[" * 1000 + b'"]', source="doc.json", error=PolicyError) == ["[" * 1000]


def test_rejects_unterminated_deep_json_with_the_error_class() -> None:
    with pytest.raises(UsageError):
        parse_json(b"[" * 100_000, source="doc.json", error=UsageError)


def test_rejects_toml_nested_deeply_with_the_error_class() -> None:
    """tomllib recurses in Python for each inline array or table."""
    for deep in (b"a = " + b"[" * 100_000 + b"]" * 100_000, b"a = " + b"{b = " * 50_000 + b"1" + b"}" * 50_000):
        with pytest.raises(UsageError, match="^site.toml is nested too deeply to parse$"):
            parse_toml(deep, source="site.toml", error=UsageError)


def test_rejects_float_and_nan_where_the_format_has_none() -> None:
    for text in (b"[1.5]", b"[NaN]", b"[Infinity]", b"[-Infinity]", b"[1e3]"):
        with pytest.raises(IntegrityError, match=r"^doc: number '.*' refused$"):
            parse_json(text, source="doc", error=IntegrityError, number="{source}: number {text!r} refused")
    assert parse_json(b"[1.5]", source="doc", error=IntegrityError) == [1.5]  # no ``number``: accepted


def test_rejects_bad_utf8_and_bad_syntax_in_the_formats_words() -> None:
    with pytest.raises(TrustError, match=r"^r.json is not valid JSON: 'utf-8' codec can't decode"):
        parse_json(b"\xff", source="r.json", error=TrustError)
    with pytest.raises(TrustError, match=r"^r.json is not valid JSON: Expecting value"):
        parse_json(b"", source="r.json", error=TrustError)
    with pytest.raises(UsageError, match=r"^p.toml: not valid TOML: "):
        parse_toml(b"a = ", source="p.toml", error=UsageError)
    with pytest.raises(UsageError, match=r"^p.toml: not valid TOML: 'utf-8' codec"):
        parse_toml(b"a = '\xff'", source="p.toml", error=UsageError)


def test_rejects_integer_of_a_million_digits_with_the_error_class() -> None:
    with pytest.raises(UsageError, match="not valid JSON"):
        parse_json(b"9" * 1_000_000, source="doc", error=UsageError)


def test_deep_manifest_is_refused_as_unsafe_content() -> None:
    from gapship.installer.formats.manifest import Manifest

    with pytest.raises(GapshipError) as e:
        Manifest.from_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert e.value.exit_code == 6


def test_deep_root_envelope_is_refused_as_trust_error() -> None:
    from gapship.installer.formats.root import Envelope

    deep = b'{"signatures":[],"signed":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(TrustError, match="nested too deeply"):
        Envelope.from_bytes(deep, where="roots/2.root.json")


def test_deep_json_in_a_subprocess_never_crashes() -> None:
    """In a fresh interpreter with a low recursion limit too: the documented class, never a traceback."""
    probe = ("import sys; sys.setrecursionlimit(200)\n"
             "from gapship.installer.kit import parse_json\n"
             "from gapship.installer.errors import UsageError\n"
             "try:\n    parse_json(b'[' * 50000 + b']' * 50000, source='x', error=UsageError)\n"
             "except UsageError as e:\n    print(e.message)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "x is nested too deeply to parse"


class _ListSink(list):  # type: ignore[type-arg]
    """A sink that keeps every element: the streamed tree is then json.loads' tree."""

    def add(self, value: object) -> None:
        self.append(value)


_STREAMS = {("chunks",): lambda path: _ListSink(), ("components",): lambda path: _ListSink(),
            ("components", "*", "files"): lambda path: _ListSink()}


def _both(data: bytes) -> tuple[tuple[str, object], tuple[str, object]]:
    def outcome(parse: Callable[[], object]) -> tuple[str, object]:
        try:
            return "ok", parse()
        except UsageError as e:
            return "error", e.message
    reference = outcome(lambda: parse_json(data, source="m", error=UsageError, number="number {text}", max_depth=None))
    streamed = outcome(lambda: parse_json_streamed(data, streams=_STREAMS, source="m", error=UsageError,
                                                   number="number {text}"))
    return reference, streamed


def test_streamed_parse_agrees_with_json_loads_on_mutated_documents() -> None:
    """The same value, or the same error in the same words at the same place, as json.loads: on a
    manifest-shaped document written three ways and on 3,000 random one-byte mutations of them."""
    import json
    import random

    doc = {"bundle": {"name": "x", "version": "1"}, "chunks": [{"hash": "ab", "name": "00000.bin", "size": 5}] * 3,
           "components": [{"files": [{"path": "a\u00e9\U0001F600", "size": 1}, {"path": "b"}], "kind": "m"}, {"k": 1}],
           "created": "x", "n": [1, -2, {"a": [3, None, True]}]}
    texts = [json.dumps(doc).encode(), json.dumps(doc, indent=1).encode(), json.dumps(doc, separators=(",", ":")).encode()]
    rng = random.Random(13)
    mutants = []
    for text in texts:
        for _ in range(1000):
            b, i = bytearray(text), rng.randrange(len(text))
            choice = rng.randrange(3)
            if choice == 0:
                del b[i]
            elif choice == 1:
                b[i:i] = bytes([rng.choice(b'{}[],:" \n0123456789.eE-tfn\\a\xff\xc3')])
            else:
                b = b[:i]
            mutants.append(bytes(b))
    for data in texts + mutants + [b"", b" ", b"\xef\xbb\xbf{}", b"[]", b'{"a":1}x', b'{"chunks":[1,]}', b'{"x":"\\u12"}',
                                   b'{"chunks":[' + b"1," * 5000 + b"1]}", b'{"n":' + b"1" * 2045 + b".5}"]:
        reference, streamed = _both(data)
        assert reference == streamed, data


def test_streamed_parse_hands_each_element_to_its_sink_and_caps_what_it_parses_whole() -> None:
    """The sink stands where the list was; a value past MAX_STREAMED_VALUE bytes or an object of
    more than MAX_WALKED_MEMBERS members on the way to a streamed list is refused, not built."""
    tree = parse_json_streamed(b'{"chunks": [1, {"a": 2}], "x": 3}', streams=_STREAMS, source="m", error=UsageError)
    assert isinstance(tree["chunks"], _ListSink) and tree == {"chunks": [1, {"a": 2}], "x": 3}
    long = b'{"x": "' + b"a" * MAX_STREAMED_VALUE + b'"}'
    with pytest.raises(UsageError, match=f"^m is not valid JSON: Value longer than {MAX_STREAMED_VALUE} bytes"):
        parse_json_streamed(long, streams=_STREAMS, source="m", error=UsageError)
    wide = b"{" + b",".join(b'"k%d":0' % i for i in range(MAX_WALKED_MEMBERS + 1)) + b"}"
    with pytest.raises(UsageError, match=f"more than {MAX_WALKED_MEMBERS} members"):
        parse_json_streamed(wide, streams=_STREAMS, source="m", error=UsageError)
    with pytest.raises(UsageError, match="nested too deeply"):
        parse_json_streamed(b'{"chunks": [' + b"[" * 30_000 + b"]" * 30_000 + b"]}", streams=_STREAMS, source="m",
                            error=UsageError, deep="{source} is nested too deeply")


def test_list_bounded_stops_one_name_past_the_cap(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"n{i}").touch()
    assert list_bounded(tmp_path, cap=5, too_many=lambda n: UsageError(f"over {n}")) == [f"n{i}" for i in range(5)]
    with pytest.raises(UsageError, match="^over 4$"):
        list_bounded(tmp_path, cap=4, too_many=lambda n: UsageError(f"over {n}"))


# -- canonical JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ({"b": 1, "a": [True, False, None]}, b'{"a":[true,false,null],"b":1}'),
    ("caf\u00e9 \u2028", "\"caf\u00e9 \u2028\"".encode()),
    ({"z": {"y": "x\n\"q\""}}, b'{"z":{"y":"x\\n\\"q\\""}}'),
    ([2**53 - 1, 0, -1], b"[9007199254740991,0,-1]"),
    ("\x00\x1f", b'"\\u0000\\u001f"'),
])
def test_canonical_json_bytes_unchanged(value: object, expected: bytes) -> None:
    assert canonical_json(value) == expected


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json(float("nan"))


# -- field readers --------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [UsageError, TrustError, PolicyError, IntegrityError])
def test_field_readers_raise_the_given_error_class(error: type[GapshipError]) -> None:
    fields = Fields(error)
    attempts: list[Callable[[], object]] = [
        lambda: fields.mapping([], "top"),
        lambda: fields.mapping({"a": 1}, "top", required={"a", "b"}),
        lambda: fields.mapping({"a": 1, "c": 2}, "top", required={"a"}),
        lambda: fields.array({}, "list"),
        lambda: fields.array([1, 2], "list", 1),
        lambda: fields.string(1, "name"),
        lambda: fields.string("", "name", nonempty=True),
        lambda: fields.integer(True, "n"),
        lambda: fields.integer(2**53, "n"),
        lambda: fields.integer(-1, "n"),
        lambda: fields.strings(["a", 1], "xs"),
        lambda: fields.strings(["a", "a"], "xs"),
        lambda: fields.strings(["A"], "xs", pattern=re.compile("[a-z]")),
    ]
    for attempt in attempts:
        with pytest.raises(error) as e:
            attempt()
        assert type(e.value) is error and "\n" not in e.value.message


def test_field_readers_keep_each_formats_wording() -> None:
    manifest = Fields(IntegrityError, prefix="manifest field ", unknown=every_repr)
    with pytest.raises(IntegrityError, match=r"^manifest field bundle has unknown 'x\\ny'$"):
        manifest.mapping({"name": 1, "x\ny": 2}, "bundle", required={"name"})
    with pytest.raises(IntegrityError, match=r"^manifest field files\[0\].size must be an integer in 0..2\^53-1$") as e:
        manifest.integer("1", "files[0]", ".size")
    assert e.value.subject == "files[0].size"
    spec = Fields(UsageError, must="is missing or not", an_object="a table")
    with pytest.raises(UsageError, match=r"^\[bundle\] is missing or not a table$"):
        spec.mapping(None, "[bundle]")
    policy = Fields(UsageError, an_object="a table", unknown=first_key)
    with pytest.raises(UsageError, match=r"^sites.x has unknown key 'a'$"):
        policy.keys({"a": 1, "b": 2, "safeguards": []}, "sites.x", required={"safeguards"})
    root = Fields(TrustError, an_object="a JSON object")
    with pytest.raises(TrustError, match=r"^r: signatures has 3 entries, over the cap of 2$"):
        root.array([1, 2, 3], "r: signatures", 2)
