"""The streaming install (installer/deploy/extract.py) and build (bundler/payload.py) run their stages on
threads of their own. These tests pin what that must not change: the exact bytes, for any block and chunk
size; a damaged chunk reported as damage (exit 3) and the first one first, whatever its bytes look
like; and the checks that only the stream can make (file hashes, tar headers, padding) on chunks
that are intact and properly signed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gapship.bundler.payload import member_header
from gapship.bundler.sign import write_signature
from gapship.installer.deploy import extract as _extract
from gapship.installer.deploy import pipeline as _pipeline
from gapship.installer.deploy.extract import _HeaderCheck
from gapship.installer.deploy.tarstream import check_header_region
from gapship.installer.errors import UnsafeContentError
from gapship.installer.formats.manifest import FileEntry, Manifest
from gapship_testing import KeyPair, assert_error, noise, run_json, tree

FILES = {
    "empty": b"",
    "one": b"x",
    "block.bin": noise(512, seed=1),
    "block-and-one.bin": noise(513, seed=2),
    "a.bin": noise(5000, seed=3),
    "sub/big.bin": noise(70_000, seed=4),
    "z.bin": noise(3000, seed=5),
}
CHUNK = 1024


def manifest_of(bundle: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((bundle / "manifest.json").read_bytes())
    return data


def file_entry(bundle: Path, name: str) -> dict[str, int | str]:
    for comp in manifest_of(bundle)["components"]:  # type: ignore[attr-defined]
        for f in comp["files"]:
            if f["path"] == f"models/tiny/{name}":
                return f  # type: ignore[no-any-return]
    raise KeyError(name)


def chunk_at(position: int) -> str:
    return f"chunks/{position // CHUNK:05d}.bin"


def flip(bundle: Path, position: int) -> str:
    """Damage one payload byte in place (the signature no longer covers it); return its chunk."""
    path = bundle / chunk_at(position)
    data = bytearray(path.read_bytes())
    data[position % CHUNK] ^= 0x40
    path.write_bytes(bytes(data))
    return chunk_at(position)


def resign(bundle: Path, key: KeyPair, *, payload: Callable[[bytearray], None] = lambda _: None,
           manifest: Callable[[dict[str, object]], None] = lambda _: None) -> None:
    """Change the payload or the manifest, recompute every chunk hash and sign again: the chunks are
    intact and authentic, only what they hold is wrong (a buggy or hostile signer)."""
    raw = manifest_of(bundle)
    chunks: list[dict[str, object]] = raw["chunks"]  # type: ignore[assignment]
    data = bytearray(b"".join((bundle / "chunks" / str(c["name"])).read_bytes() for c in chunks))
    payload(data)
    for i, c in enumerate(chunks):
        piece = bytes(data[i * CHUNK:(i + 1) * CHUNK])
        (bundle / "chunks" / str(c["name"])).write_bytes(piece)
        c["hash"] = hashlib.sha256(piece).hexdigest()
    manifest(raw)
    data_bytes = Manifest.from_dict(raw).to_bytes()
    (bundle / "manifest.json").write_bytes(data_bytes)
    for sig in (bundle / "signatures").iterdir():
        sig.unlink()
    write_signature(bundle, data_bytes, key.key)
    shutil.rmtree(bundle / "provenance")  # it names the old manifest (docs/format.md 11.4); a bundle may have none


@pytest.fixture
def setup(tmp_path: Path, make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
          make_bundle: Callable[..., Path]) -> tuple[Path, Path, Path, KeyPair]:
    key = make_key("release")
    return make_bundle(key, files=FILES, chunk_size=CHUNK), make_trust(key), tmp_path / "prefix", key


def install_fails(bundle: Path, trust: Path, prefix: Path, *, code: int, kind: str, subject: str) -> str:
    got, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix)
    assert got == code, out
    message = assert_error(out, code=code, kind=kind, subject=subject)
    assert set(tree(prefix)) <= {"demo/.lock"}, sorted(tree(prefix))  # nothing installed, no staging left
    return message


@pytest.mark.parametrize(("block", "chunk", "large"), [(512, 512, 0), (700, 1000, 0), (4096, 1536, 0), (0, 4096, 0),
                                                   (512, 512, 4096), (700, 1000, 3000), (4096, 1536, 4096)])
def test_installs_exact_bytes_for_any_block_and_chunk_size(
        block: int, chunk: int, large: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path], make_bundle: Callable[..., Path]) -> None:
    """``large``: files from that size on go to the large-file writer (its own stage, O_DIRECT where
    aligned), as files of DIRECT_MIN bytes and more do."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    if large:
        monkeypatch.setattr(_extract, "DIRECT_MIN", large)
        monkeypatch.setattr(_pipeline, "DIRECT_MIN", large)
    key = make_key("release")
    reference = make_bundle(key, files=FILES, chunk_size=chunk)  # the default 1 MiB blocks
    if block:
        monkeypatch.setattr(_pipeline, "BLOCK_SIZE", block)
        monkeypatch.setattr(_pipeline, "DEFAULT_DEPTH", 2)
        monkeypatch.setattr(_pipeline, "WRITEBACK_WINDOW", 3000)  # the flusher runs during build and install
    bundle = make_bundle(key, files=FILES, chunk_size=chunk)
    assert tree(bundle) == tree(reference)  # the build does not depend on how the stream was cut

    code, out = run_json("install", bundle, "--trust", make_trust(key), "--prefix", tmp_path / "prefix")
    assert code == 0, out
    root = tmp_path / "prefix" / "demo" / "current" / "models" / "tiny"
    for rel, data in FILES.items():
        assert (root / rel).read_bytes() == data
        assert stat.S_IMODE((root / rel).stat().st_mode) == 0o644


def test_rejects_damaged_tar_header_as_a_damaged_chunk(setup: tuple[Path, Path, Path, KeyPair]) -> None:
    """The damaged bytes are a tar header, which alone would be unsafe content (exit 6); the chunk's
    own hash is checked first, so the report is the damage (exit 3) and names the chunk."""
    bundle, trust, prefix, _ = setup
    header = int(file_entry(bundle, "z.bin")["offset"]) - 512
    subject = flip(bundle, header + 3)
    message = install_fails(bundle, trust, prefix, code=3, kind="integrity", subject=subject)
    assert message == f"{subject} does not match its sha256 hash in the manifest"


def test_rejects_damaged_padding_as_a_damaged_chunk(setup: tuple[Path, Path, Path, KeyPair]) -> None:
    bundle, trust, prefix, _ = setup
    f = file_entry(bundle, "block-and-one.bin")
    subject = flip(bundle, int(f["offset"]) + int(f["size"]) + 7)
    install_fails(bundle, trust, prefix, code=3, kind="integrity", subject=subject)


def test_reports_the_first_of_two_damaged_chunks(setup: tuple[Path, Path, Path, KeyPair]) -> None:
    bundle, trust, prefix, _ = setup
    big = file_entry(bundle, "sub/big.bin")
    first = flip(bundle, int(big["offset"]) + 10)
    later = flip(bundle, int(file_entry(bundle, "z.bin")["offset"]) - 500)  # a header, further on
    assert first < later
    install_fails(bundle, trust, prefix, code=3, kind="integrity", subject=first)


def test_rejects_file_whose_bytes_do_not_match_its_signed_hash(setup: tuple[Path, Path, Path, KeyPair]) -> None:
    """Every chunk matches, but the manifest's file hash does not: the file check still runs."""
    bundle, trust, prefix, key = setup

    def wrong_hash(raw: dict[str, object]) -> None:
        for comp in raw["components"]:  # type: ignore[attr-defined]
            for f in comp["files"]:
                if f["path"] == "models/tiny/a.bin":
                    f["hash"] = hashlib.sha256(b"something else").hexdigest()

    resign(bundle, key, manifest=wrong_hash)
    message = install_fails(bundle, trust, prefix, code=3, kind="integrity", subject="models/tiny/a.bin")
    assert message == "file 'models/tiny/a.bin' does not match its sha256 hash"


def test_rejects_non_zero_padding_in_intact_chunks(setup: tuple[Path, Path, Path, KeyPair]) -> None:
    bundle, trust, prefix, key = setup
    end = int(file_entry(bundle, "a.bin")["offset"]) + 5000

    def dirty_padding(data: bytearray) -> None:
        data[end + 11] = 1

    resign(bundle, key, payload=dirty_padding)
    message = install_fails(bundle, trust, prefix, code=6, kind="unsafe", subject="models/tiny/a.bin")
    assert "non-zero bytes in the tar stream after 'models/tiny/a.bin'" in message


def test_rejects_tar_header_that_differs_from_the_manifest_in_intact_chunks(
        setup: tuple[Path, Path, Path, KeyPair]) -> None:
    bundle, trust, prefix, key = setup
    header = int(file_entry(bundle, "z.bin")["offset"]) - 512

    def rename_entry(data: bytearray) -> None:
        name = bytes(data[header:header + 100])
        assert name.startswith(b"models/tiny/z.bin\0")
        data[header + 12] = ord("y")  # models/tiny/y.bin, with its checksum fixed
        data[header + 148:header + 156] = b" " * 8
        data[header + 148:header + 155] = b"%06o\0" % sum(data[header:header + 512])

    resign(bundle, key, payload=rename_entry)
    message = install_fails(bundle, trust, prefix, code=6, kind="unsafe", subject="models/tiny/z.bin")
    assert "names 'models/tiny/y.bin'" in message


def test_damaged_chunk_is_reported_before_unsafe_content_further_on(setup: tuple[Path, Path, Path, KeyPair]) -> None:
    bundle, trust, prefix, key = setup
    end = int(file_entry(bundle, "z.bin")["offset"]) + 3000

    def dirty_padding(data: bytearray) -> None:
        data[end + 1] = 1

    resign(bundle, key, payload=dirty_padding)
    damaged = flip(bundle, int(file_entry(bundle, "block.bin")["offset"]))
    assert damaged < chunk_at(end + 1)
    install_fails(bundle, trust, prefix, code=3, kind="integrity", subject=damaged)


def test_unsafe_content_is_reported_before_a_damaged_chunk_further_on(setup: tuple[Path, Path, Path, KeyPair]) -> None:
    """Stream order decides between problems in different chunks, as a one-by-one reader would."""
    bundle, trust, prefix, key = setup
    end = int(file_entry(bundle, "block-and-one.bin")["offset"]) + 513

    def dirty_padding(data: bytearray) -> None:
        data[end + 1] = 1

    resign(bundle, key, payload=dirty_padding)
    damaged = flip(bundle, int(file_entry(bundle, "z.bin")["offset"]) + 5)
    assert chunk_at(end + 1) < damaged
    install_fails(bundle, trust, prefix, code=6, kind="unsafe", subject="models/tiny/block-and-one.bin")


# -- the tar header shortcut ---------------------------------------------------------------------

MTIME = 1_700_000_000
DIGEST = "0" * 64


def _outcome(check: Callable[[bytes, FileEntry], None], region: bytes, entry: FileEntry) -> str | None:
    try:
        check(region, entry)
    except UnsafeContentError as e:
        return e.message
    return None


@pytest.mark.slow  # hypothesis
@settings(max_examples=400, deadline=None)
@given(index=st.integers(0, 511), value=st.integers(0, 255), fix_checksum=st.booleans(),
       path=st.sampled_from(["models/m/second.bin", "models/m/" + "x" * 95, "models/m/é.bin", "models/m/" + "y" * 120]))
def test_header_shortcut_decides_exactly_as_the_full_check(index: int, value: int, fix_checksum: bool, path: str) -> None:
    first = FileEntry("models/m/first.bin", 10, 0o644, DIGEST, 512)
    checker = _HeaderCheck()
    checker.check(member_header(first.path, first.size, first.mode, MTIME), first)
    assert checker.template is not None
    entry = FileEntry(path, 123_456, 0o755, DIGEST, 4096)
    region = bytearray(member_header(entry.path, entry.size, entry.mode, MTIME))
    region[index] = value
    if fix_checksum:
        region[148:156] = b" " * 8
        region[148:155] = b"%06o\0" % sum(region[:512])
    assert _outcome(checker.check, bytes(region), entry) == _outcome(check_header_region, bytes(region), entry)


def test_header_shortcut_takes_the_common_case() -> None:
    """Not a timing: that the shortcut is used at all, so the test above compares two paths."""
    checker = _HeaderCheck()
    entries = [FileEntry(f"models/m/f{i}.bin", i * 1000, 0o644 if i % 2 else 0o755, DIGEST, 512 * (i + 1))
               for i in range(5)]
    checker.check(member_header(entries[0].path, entries[0].size, entries[0].mode, MTIME), entries[0])
    for e in entries[1:]:
        assert checker._expected(e) == member_header(e.path, e.size, e.mode, MTIME)


# A default ACL u::rwx,g::r-x,o::--- in the kernel's xattr form (version 2, then tag, permissions, id).
_DEFAULT_ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                               for tag, perm in ((0x01, 7), (0x04, 5), (0x20, 0)))


def test_modes_are_exact_under_a_default_acl(setup: tuple[Path, Path, Path, KeyPair]) -> None:
    """A default ACL on the prefix replaces the umask with its own mask (a file created 0644 would
    come out 0640): files still get exactly their manifest mode, and the version re-adopts."""
    bundle, trust, prefix, _ = setup
    prefix.mkdir()
    try:
        os.setxattr(prefix, "system.posix_acl_default", _DEFAULT_ACL)
    except OSError as e:
        pytest.skip(f"no POSIX ACLs on {prefix}: {e.strerror}")
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix)
    assert code == 0, out
    root = prefix / "demo" / "current" / "models" / "tiny"
    for rel in FILES:
        assert stat.S_IMODE((root / rel).stat().st_mode) == 0o644, rel
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix, "--allow-reinstall")
    assert code == 0, out
