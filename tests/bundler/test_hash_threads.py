"""Files hashed by the reading thread or by several file-hash stages (bundler/payload.py, module doc):
whatever the thread count, the same chunks, offsets, hashes, manifest and SBOM, byte for byte, and a
source that changes under the build is refused as with one thread."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from gapship.bundler import payload
from gapship.bundler.build import build
from gapship.bundler.payload import INLINE_MAX, PayloadWriter, file_hash_threads
from gapship.bundler.sources import collect_sources
from gapship.bundler.spec import load_spec
from gapship.installer.deploy import pipeline as _pipeline
from gapship.installer.errors import UsageError
from gapship_testing import KeyPair, assert_error, noise, run_json, tree, write_payload

THREADS = [1, 2, 4]

# Small files (hashed by the reading thread), files just over the inline limit, and files larger than a
# pipeline buffer (hashed by the stages), mixed with empty ones, so stages lag and overtake each other.
SOURCES = {
    "e0": b"",
    "small-a": noise(3000, seed=1),
    "edge-inline": noise(INLINE_MAX, seed=2),
    "edge-staged": noise(INLINE_MAX + 1, seed=3),
    "e1": b"",
    "big-a": noise(300_000, seed=4),
    "small-b": b"z",
    "big-b": noise(170_001, seed=5),
    "big-c": noise(90_000, seed=6),
    "small-c": noise(511, seed=7),
    "e2": b"",
}


def _write(folder: Path, sources: dict[str, bytes], *, threads: int, chunk_size: int = 50_000,
           declared: dict[str, int] | None = None) -> tuple[payload.Payload, bytes]:
    result = write_payload(folder, sources, chunk_size=chunk_size, declared=declared, hash_threads=threads)
    return result, b"".join((folder / "chunks" / c.name).read_bytes() for c in result.chunks)


@pytest.mark.parametrize("block", [4096, 0])  # small buffers, so that 4 stages are many buffers apart
def test_chunks_offsets_and_hashes_are_the_same_whatever_the_thread_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    if block:
        monkeypatch.setattr(_pipeline, "BLOCK_SIZE", block)
        monkeypatch.setattr(_pipeline, "DEFAULT_DEPTH", 3)
    results = {n: _write(tmp_path / str(n), SOURCES, threads=n) for n in THREADS}
    first, stream = results[1]
    assert first.hashes == [hashlib.sha256(data).hexdigest() for data in SOURCES.values()]
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        assert [m.offset_data for m in tar.getmembers()] == list(first.offsets)
    for n in THREADS[1:]:
        other, other_stream = results[n]
        assert other_stream == stream
        assert (other.size, other.chunks, list(other.offsets), list(other.hashes)) == \
               (first.size, first.chunks, list(first.offsets), list(first.hashes))


def test_hashes_so_far_merges_every_hasher_in_payload_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the SBOM lists is taken before the end of the stream: every stage must have caught up."""
    monkeypatch.setattr(_pipeline, "BLOCK_SIZE", 4096)
    monkeypatch.setattr(_pipeline, "DEFAULT_DEPTH", 3)
    (tmp_path / "chunks").mkdir()
    writer = PayloadWriter(tmp_path / "chunks", chunk_size=50_000, algorithm="sha256", mtime=0, hash_threads=4)
    try:
        for name, data in SOURCES.items():
            (tmp_path / name).write_bytes(data)
            writer.add(tmp_path / name, f"models/m/{name}", len(data), 0o644)
        assert writer.hashes_so_far() == [hashlib.sha256(data).hexdigest() for data in SOURCES.values()]
        writer.add_bytes(b"listed last", "sbom/x.json", 0o644)
        assert writer.finish().hashes[-1] == hashlib.sha256(b"listed last").hexdigest()
    finally:
        writer.abort()


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize(("name", "actual", "declared"), [
    ("small", 5000, 4999), ("small", 5000, 5001), ("large", 200_000, 199_999), ("large", 200_000, 200_001),
])
def test_rejects_source_that_changed_size_whatever_the_thread_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int, name: str, actual: int, declared: int) -> None:
    monkeypatch.setattr(_pipeline, "BLOCK_SIZE", 4096)
    monkeypatch.setattr(_pipeline, "DEFAULT_DEPTH", 3)
    sources = {"before": noise(100_000, seed=8), name: noise(actual, seed=9)}
    with pytest.raises(UsageError, match="changed size while it was being bundled") as info:
        _write(tmp_path, sources, threads=threads, declared={name: declared})
    assert info.value.subject == str(tmp_path / "src" / name)


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (3, 2), (4, 3), (9, 8), (64, 8)])
def test_thread_rule(monkeypatch: pytest.MonkeyPatch, cores: int, threads: int) -> None:
    monkeypatch.delenv("GAPSHIP_HASH_THREADS", raising=False)
    assert file_hash_threads(cores) == threads


def test_environment_overrides_the_thread_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAPSHIP_HASH_THREADS", "5")
    assert file_hash_threads(2) == 5


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "", " 3", "٣"])
def test_rejects_bad_thread_count_in_environment(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("GAPSHIP_HASH_THREADS", value)
    with pytest.raises(UsageError, match="GAPSHIP_HASH_THREADS") as info:
        file_hash_threads(4)
    assert info.value.subject == "GAPSHIP_HASH_THREADS"


# -- the whole build: manifest, chunks and SBOM ----------------------------------------------------------


def _model_files() -> dict[str, bytes]:
    files = {f"shard-{i}.bin": noise(150_000 + 7 * i, seed=10 + i) for i in range(5)}
    files |= {f"tok/{i:02d}.json": noise(100 + 37 * i, seed=30 + i) for i in range(20)}
    files["empty.txt"] = b""
    return files


def test_build_is_byte_identical_with_1_2_and_4_hash_threads(
        tmp_path: Path, make_key: Callable[[str], KeyPair], make_spec: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pipeline, "BLOCK_SIZE", 16 * 1024)
    monkeypatch.setattr(_pipeline, "DEFAULT_DEPTH", 4)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    key = make_key("release")
    spec = load_spec(make_spec(files=_model_files()))
    trees = {}
    for n in THREADS:
        monkeypatch.setenv("GAPSHIP_HASH_THREADS", str(n))
        build(spec, out=tmp_path / f"t{n}", key=key.key, chunk_size=64 * 1024)
        trees[n] = tree(tmp_path / f"t{n}")
    manifest = json.loads(trees[1]["manifest.json"])
    assert "sbom" in [c["kind"] for c in manifest["components"]]  # the SBOM, in the chunks compared
    for n in THREADS[1:]:
        assert trees[n] == trees[1]  # manifest.json, signatures, every chunk


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("victim", ["shard-2.bin", "tok/03.json"])  # a staged file and an inline one
def test_build_rejects_a_source_that_grew_after_the_walk(
        tmp_path: Path, make_key: Callable[[str], KeyPair], make_spec: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch, threads: int, victim: str) -> None:
    monkeypatch.setenv("GAPSHIP_HASH_THREADS", str(threads))
    spec = load_spec(make_spec(files=_model_files()))
    sources = collect_sources(spec)  # walked: sizes recorded
    target = spec.path.parent / "model" / victim
    with target.open("ab") as f:
        f.write(b"appended after the walk")
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="changed size while it was being bundled") as info:
        build(spec, out=out, key=make_key("release").key, chunk_size=64 * 1024, sources=sources)
    assert info.value.subject == str(target)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_build_rejects_bad_thread_count_with_exit_2(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                                     make_spec: Callable[..., Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAPSHIP_HASH_THREADS", "many")
    out = tmp_path / "out"
    code, result = run_json("build", make_spec(), "--out", out, "--key", make_key("release").private)
    assert code == 2
    assert assert_error(result, code=2, kind="usage", subject="GAPSHIP_HASH_THREADS") == \
        "GAPSHIP_HASH_THREADS='many' is not a whole number from 1 to 64"
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_larger_files_are_spread_over_every_stage_and_small_ones_stay_with_the_reader(tmp_path: Path) -> None:
    (tmp_path / "chunks").mkdir()
    writer = PayloadWriter(tmp_path / "chunks", chunk_size=1 << 20, algorithm="sha256", mtime=0, hash_threads=4)
    try:
        for i, size in enumerate([200_000, 100, 200_000, 200_000, 0, 200_000, 300_000]):
            (tmp_path / f"f{i}").write_bytes(noise(size, seed=i))
            writer.add(tmp_path / f"f{i}", f"models/m/f{i}", size, 0o644)
        writer.finish()
    finally:
        writer.abort()
    assert list(writer._owners) == [0, payload._INLINE, 1, 2, payload._INLINE, 3, 0]
