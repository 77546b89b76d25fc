"""The payload writer (bundler/payload.py; docs/format.md, "Payload"): one POSIX tar stream cut into
chunks, so ``cat chunks/* | tar -x`` must give back exactly the manifest's files, with the system's own
tar. The stream is laid into pipeline buffers and every source file is read once; a source that
changes size under the builder is refused, and what was written is exactly a tar stream whose chunk and
file hashes the writer reports."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gapship.bundler.payload import PayloadWriter, member_header
from gapship.installer.errors import UsageError
from gapship.installer.deploy import pipeline as _pipeline
from gapship_testing import KeyPair, noise, write_payload


# -- the stream as a tar sees it -------------------------------------------------------------------


FILES = {
    "config.json": b'{"hidden": 4}\n',
    "weights.bin": noise(50_000, seed=1),
    "empty": b"",
    "deep/" + "d" * 90 + "/" + "f" * 80 + ".bin": noise(1000, seed=2),  # needs a pax path record
    "modèle/naïve-日本.bin": noise(513, seed=3),  # needs a pax path record
    "run.sh": b"#!/bin/sh\n",
}


@pytest.fixture
def bundle(make_key: Callable[[str], KeyPair], make_bundle: Callable[..., Path], tmp_path: Path) -> Path:
    if shutil.which("tar") is None:
        pytest.skip("no tar(1) on this host")
    return make_bundle(make_key("release"), out=tmp_path / "bundle", chunk_size=4096, files=FILES)


def _shell(command: str) -> subprocess.CompletedProcess[bytes]:
    """The admin's pipeline, as written in docs/format.md (the shell sorts chunks/* by name)."""
    return subprocess.run(command, shell=True, capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8"})


def _manifest_files(bundle: Path) -> dict[str, dict[str, object]]:
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    return {f["path"]: f for c in manifest["components"] for f in c["files"]}


def test_cat_chunks_into_tar_extracts_exactly_the_manifest_files(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "extracted"
    out.mkdir()
    done = _shell(f"cat {shlex.quote(str(bundle))}/chunks/* | tar -x -f - -C {shlex.quote(str(out))}")
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    expected = _manifest_files(bundle)
    found = {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir()}
    assert found == set(expected)
    for path, entry in expected.items():
        data = (out / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["hash"] and len(data) == entry["size"]
    for rel, data in FILES.items():
        assert (out / "models" / "tiny" / rel).read_bytes() == data


def test_tar_lists_only_regular_files(bundle: Path) -> None:
    listing = _shell(f"cat {shlex.quote(str(bundle))}/chunks/* | tar -t -v -f -")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.decode("utf-8").splitlines()
    assert len(lines) == len(_manifest_files(bundle))
    assert all(line.startswith("-") for line in lines), lines  # no dirs, links, devices, pax leftovers


# -- the writer: pipeline buffers, one read per source ---------------------------------------------


def write(folder: Path, sources: dict[str, bytes], chunk_size: int, *, declared: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    return write_payload(folder, sources, chunk_size=chunk_size, declared=declared)


@pytest.mark.parametrize("block", [512, 1000, 0])
def test_stream_chunks_and_hashes_are_what_was_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        block: int) -> None:
    if block:
        monkeypatch.setattr(_pipeline, "BLOCK_SIZE", block)
        monkeypatch.setattr(_pipeline, "DEFAULT_DEPTH", 2)
    sources = {"a": noise(3000, seed=1), "empty": b"", "b": noise(10_000, seed=2), "c": b"z"}
    payload = write(tmp_path, sources, chunk_size=1536)
    chunks = [(tmp_path / "chunks" / c.name).read_bytes() for c in payload.chunks]
    assert [c.name for c in payload.chunks] == sorted(p.name for p in (tmp_path / "chunks").iterdir())
    assert [len(c) for c in chunks[:-1]] == [1536] * (len(chunks) - 1)
    assert [hashlib.sha256(c).hexdigest() for c in chunks] == [c.hash for c in payload.chunks]
    stream = b"".join(chunks)
    assert len(stream) == payload.size
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"models/m/{n}" for n in sources]
        assert len(payload.offsets) == len(payload.hashes) == len(sources)
        for (name, data), member, offset, digest in zip(sources.items(), members, payload.offsets, payload.hashes):
            assert member.offset_data == offset
            assert stream[offset:offset + len(data)] == data
            assert digest == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("actual", "declared"), [(5000, 4999), (5000, 5001), (0, 1), (1, 0), (5000, 4096)])
@pytest.mark.parametrize("block", [512, 0])
def test_rejects_source_that_changed_size_while_bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        actual: int, declared: int, block: int) -> None:
    """The growth check rides on the read of the last bytes, whether they fill a buffer (512) or not."""
    if block:
        monkeypatch.setattr(_pipeline, "BLOCK_SIZE", block)
        monkeypatch.setattr(_pipeline, "DEFAULT_DEPTH", 2)
    with pytest.raises(UsageError, match="changed size while it was being bundled") as info:
        write(tmp_path, {"w.bin": noise(actual, seed=3)}, chunk_size=1024, declared={"w.bin": declared})
    assert info.value.subject == str(tmp_path / "src" / "w.bin")


def test_rejects_unreadable_source(tmp_path: Path) -> None:
    (tmp_path / "chunks").mkdir()
    writer = PayloadWriter(tmp_path / "chunks", chunk_size=1024, algorithm="sha256", mtime=0)
    try:
        with pytest.raises(UsageError, match="cannot read"):
            writer.add(tmp_path / "missing", "models/m/missing", 10, 0o644)
    finally:
        writer.abort()


# -- the headers are tarfile's, byte for byte (docs/format.md, section 5.1) ---------------------------

def _tarfile_header(path: str, size: int, mode: int, mtime: int) -> bytes:
    """What `gapship build` wrote through tarfile before it wrote headers itself."""
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.mtime = size, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


USTAR_LIMIT = 8**11  # the first size (and mtime) that no longer fits in 11 octal digits
PATHS = [
    "models/m/a.bin",
    "models/m/" + "x" * 91,  # exactly 100 characters: the last that fits the ustar name field
    "models/m/" + "x" * 92,  # 101: a pax path record
    "models/m/" + "y" * 1015,  # 1024, the longest path a bundle may carry
    "models/m/modèle/naïve-日本.bin",  # not ASCII: a pax path record, '?' in the ustar field
    "models/m/" + "é" * 100,  # non-ASCII and long: the ustar field keeps only the first 100 bytes
    "models/m/𝄞 \"quote\" 'tick' = % \u0301.bin",  # astral, a combining mark, '=', '%'
]
# pax records "<length> path=<value>\n" whose length gains a digit once its own digits are counted:
# values of 91 and 92 bytes (non-ASCII, or they would fit the ustar field) and of 994 and 995 bytes.
PATHS += ["models/m/é" + "z" * n for n in range(78, 84)] + ["models/m/" + "z" * n for n in range(982, 988)]


def test_member_header_is_what_tarfile_writes() -> None:
    """Every path above with sizes and mtimes on both sides of the ustar limits and both modes."""
    entries = itertools.product(PATHS, [0, 1, 511, 512, USTAR_LIMIT - 1, USTAR_LIMIT, 2**53 - 1], [0o644, 0o755],
                                [0, 1_700_000_000, USTAR_LIMIT - 1, USTAR_LIMIT, 253_402_300_799])
    differ = [e for e in entries if member_header(*e) != _tarfile_header(*e)]
    assert differ == []


@pytest.mark.slow  # hypothesis
@settings(max_examples=500, deadline=None)
@given(path=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300),
       size=st.integers(0, 2**53 - 1) | st.sampled_from([USTAR_LIMIT - 1, USTAR_LIMIT]),
       mode=st.integers(0, 0o7777), mtime=st.integers(0, 2**40))
def test_member_header_matches_tarfile_for_any_entry(path: str, size: int, mode: int, mtime: int) -> None:
    assert member_header(path, size, mode, mtime) == _tarfile_header(path, size, mode, mtime)


def test_whole_stream_is_what_tarfile_writes(tmp_path: Path) -> None:
    """The stream of many varied members, the end of the archive included, equals the one tarfile
    writes for the same members: the bytes `gapship build` wrote before it wrote headers itself."""
    sources = {}
    for i, path in enumerate(PATHS):
        rel = path.removeprefix("models/m/")
        sources[f"{i:02d}/{rel}"[:200]] = noise([0, 1, 511, 512, 513, 10_240, 70_000][i % 7], seed=i)
    sources["empty-last"] = b""
    payload = write(tmp_path, sources, chunk_size=4096)
    stream = b"".join((tmp_path / "chunks" / c.name).read_bytes() for c in payload.chunks)

    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for name, data in sources.items():
            tar.addfile(_tarinfo(f"models/m/{name}", len(data)), io.BytesIO(data))
    assert stream == expected.getvalue()


def _tarinfo(path: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@pytest.mark.parametrize("block", [512, 1536])
def test_empty_files_anywhere_get_the_empty_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Empty files first, in a row, after a file that ends a pipeline buffer exactly, and last."""
    monkeypatch.setattr(_pipeline, "BLOCK_SIZE", block)
    monkeypatch.setattr(_pipeline, "DEFAULT_DEPTH", 2)
    sources = {"e0": b"", "e1": b"", "a": noise(512, seed=1), "e2": b"", "b": noise(1000, seed=2),
               "e3": b"", "e4": b"", "c": noise(block - 512, seed=3), "e5": b""}
    payload = write(tmp_path, sources, chunk_size=1024)
    stream = b"".join((tmp_path / "chunks" / c.name).read_bytes() for c in payload.chunks)
    assert payload.hashes == [hashlib.sha256(data).hexdigest() for data in sources.values()]
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        assert [m.offset_data for m in tar.getmembers()] == list(payload.offsets)
