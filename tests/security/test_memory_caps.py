"""Peak memory stays under 200 MB at every cap (issue 13, class 6; docs/format.md, "Limits").

Each test runs the real ``gapship`` command on a bundle at one of the format's caps and measures the
peak RSS of that process (tests/support/cap_bundles.py says how). The bound is a resource bound, not a
timing: it holds on any machine. Before issue 13 the same commands peaked at 212 to 577 MB (a
manifest at the chunk cap or the file cap, 200,000 files installed, a non-canonical one, 6.7 million short strings, 64 carried
authorizations at their caps, roots and signatures at theirs); now at 43 to 158 MB.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cap_bundles import CEILING, entries_that_fit, peak_rss, write_cap_bundle
from gapship.bundler.keys import SigningKey, keygen
from gapship.installer.bundle.files import MAX_ROOT_FILE_BYTES, MAX_ROOT_FILES, MAX_SIGNATURE_BYTES, MAX_SIGNATURE_FILES
from gapship.installer.crypto.keys import signature_file_name
from gapship.installer.formats.authorization import MAX_AUTHORIZATIONS, MAX_DOCUMENT_BYTES
from gapship.installer.formats.manifest import MAX_CHUNKS, MAX_FILES, MAX_MANIFEST_BYTES, Manifest
from gapship.bundler.build import build
from gapship.bundler.spec import load_spec
from gapship_testing import KeyPair, write_spec

MB = 1000 * 1000


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, Path]:
    base = tmp_path_factory.mktemp("caps")
    private, public, _ = keygen("release", base / "keys")
    trust = base / "trust"
    trust.mkdir()
    shutil.copy(public, trust / public.name)
    return KeyPair("release", private, public, SigningKey.load(private)), trust


def _sparse(path: Path, size: int) -> None:
    """A file of ``size`` zero bytes that takes no disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def _assert_under(peak: int, what: str) -> None:
    assert peak < CEILING, f"{what}: peak RSS {peak / MB:.0f} MB, over {CEILING / MB:.0f} MB"


@pytest.mark.slow
def test_verify_of_a_manifest_at_the_chunk_cap_stays_under_200mb(signer: tuple[KeyPair, Path], tmp_path: Path) -> None:
    """100,000 chunks, and as many files as still fit in the 32 MiB manifest: every chunk is hashed."""
    key, trust = signer
    files = entries_that_fit(chunks=MAX_CHUNKS)
    data = write_cap_bundle(tmp_path / "b", key, files=files, chunks=MAX_CHUNKS)
    assert len(data) > MAX_MANIFEST_BYTES - 256 * 1024  # the byte cap is reached too
    code, peak, out = peak_rss("verify", tmp_path / "b", "--trust", trust, "--json")
    _assert_under(peak, f"verify of {files} files and {MAX_CHUNKS} chunks")
    assert code == 0, out
    assert json.loads(out)["chunks_checked"] > MAX_CHUNKS * 0.99


@pytest.mark.slow
def test_verify_of_a_manifest_at_the_file_cap_stays_under_200mb(signer: tuple[KeyPair, Path], tmp_path: Path) -> None:
    key, trust = signer
    write_cap_bundle(tmp_path / "b", key, files=MAX_FILES - 1, chunks=1)  # the policy is the last file
    code, peak, out = peak_rss("verify", tmp_path / "b", "--trust", trust, "--json")
    _assert_under(peak, f"verify of {MAX_FILES} files")
    assert code == 0, out


@pytest.mark.slow
def test_inspect_of_a_manifest_at_the_chunk_cap_stays_under_200mb(signer: tuple[KeyPair, Path], tmp_path: Path) -> None:
    """inspect parses an unverified manifest: the same parser, the same bound."""
    key, _ = signer
    write_cap_bundle(tmp_path / "b", key, files=entries_that_fit(chunks=MAX_CHUNKS), chunks=MAX_CHUNKS)
    code, peak, out = peak_rss("inspect", tmp_path / "b", "--json")
    _assert_under(peak, "inspect at the chunk cap")
    assert code == 0, out


@pytest.mark.slow
def test_signed_manifest_at_the_cap_but_not_canonical_is_refused_under_200mb(signer: tuple[KeyPair, Path],
                                                                             tmp_path: Path) -> None:
    """The chunk-cap manifest with a space after every separator, signed (a compromised build): no
    entry takes the fast path, every one is parsed on its own, and the whole is refused (exit 6)."""
    key, trust = signer
    data = write_cap_bundle(tmp_path / "b", key, files=entries_that_fit(chunks=MAX_CHUNKS) - 40_000, chunks=MAX_CHUNKS)
    loose = data.replace(b'","', b'", "')
    assert len(loose) <= MAX_MANIFEST_BYTES
    (tmp_path / "b" / "manifest.json").write_bytes(loose)
    (tmp_path / "b" / "signatures" / signature_file_name(key.keyid)).write_bytes(key.key.sign(loose))
    code, peak, out = peak_rss("verify", tmp_path / "b", "--trust", trust, "--json")
    _assert_under(peak, "refusing a non-canonical manifest at the byte cap")
    assert code == 6 and "canonical form" in json.loads(out)["error"]["message"], out


def test_signed_manifest_of_millions_of_short_strings_is_refused_under_200mb(signer: tuple[KeyPair, Path],
                                                                            tmp_path: Path) -> None:
    """6.7 million two-letter strings fit in the byte cap and are no JSON container, so no container
    count stops them; json.loads built them all (about 400 MB). Now the value is parsed from a slice
    of at most 64 KiB and refused as too long (exit 6)."""
    key, trust = signer
    data = write_cap_bundle(tmp_path / "b", key, files=1, chunks=1)
    head = b'{"bundle":{"name":"demo","version":"2.0.0"},"chunk_size":'
    garbage = b'["ab"' + b',"ab"' * ((MAX_MANIFEST_BYTES - len(data) - 64) // 5) + b"]"
    hostile = data.replace(b'"created":"2026-01-01T00:00:00Z"', b'"created":' + garbage)
    assert hostile.startswith(head) and len(hostile) <= MAX_MANIFEST_BYTES
    (tmp_path / "b" / "manifest.json").write_bytes(hostile)
    (tmp_path / "b" / "signatures" / signature_file_name(key.keyid)).write_bytes(key.key.sign(hostile))
    code, peak, out = peak_rss("verify", tmp_path / "b", "--trust", trust, "--json")
    _assert_under(peak, "refusing 6.7 million strings")
    assert code == 6 and "longer than" in json.loads(out)["error"]["message"], out


def test_install_with_64_authorizations_at_their_caps_stays_under_200mb(signer: tuple[KeyPair, Path],
                                                                       tmp_path: Path) -> None:
    """Anyone on the transfer path can add authorizations/: 64 of them, each a 64 KiB document and 64
    signature files of 64 KiB (260 MiB in all, sparse here) are refused at the budget, not read."""
    key, trust = signer
    write_spec(tmp_path / "src", {f"f{i}.bin": b"%d" % i for i in range(6)})  # 7 files with the policy
    bundle = tmp_path / "b"
    build(load_spec(tmp_path / "src" / "spec.toml"), out=bundle, key=key.key, chunk_size=1 << 20)
    for i in range(MAX_AUTHORIZATIONS):
        folder = bundle / "authorizations" / f"site-{i:02d}"
        _sparse(folder / "authorization.json", MAX_DOCUMENT_BYTES)
        for j in range(MAX_SIGNATURE_FILES):
            _sparse(folder / "signatures" / f"{j:064x}.ed25519.sig", MAX_SIGNATURE_BYTES)
    (tmp_path / "site.toml").write_text('site_id = "test-site"\nsafeguards = ["inference-audit-log"]\n'
                                        f'audit_log = "{tmp_path / "site-audit.jsonl"}"\n')
    code, peak, out = peak_rss("install", bundle, "--trust", trust, "--prefix", tmp_path / "prefix", "--site-config",
                               tmp_path / "site.toml", "--audit-log", tmp_path / "audit.jsonl", "--json")
    _assert_under(peak, "install with 64 carried authorizations at their caps")
    assert code == 4 and "budget" in json.loads(out)["error"]["message"], out


@pytest.mark.slow
def test_install_of_a_bundle_at_the_file_cap_stays_under_200mb(signer: tuple[KeyPair, Path], tmp_path: Path) -> None:
    """200,000 files built by gapship's own bundler and installed: the tables, the streamed extract
    and the records of every file, end to end. Made on a tmpfs where there is one (/dev/shm): this is a
    memory bound, and creating 400,000 inodes on these VMs' disks took 2 minutes, on a tmpfs 35 s."""
    key, trust = signer
    with _scratch(tmp_path) as scratch:
        _install_at_the_file_cap(key, trust, scratch)


@contextmanager
def _scratch(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    scratch = Path(tempfile.mkdtemp(prefix="gapship-caps-", dir=shm))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _install_at_the_file_cap(key: KeyPair, trust: Path, tmp_path: Path) -> None:
    model = tmp_path / "src" / "model"
    for d in range(200):
        (model / f"d{d:03d}").mkdir(parents=True)
        for i in range((MAX_FILES - 1) // 200):
            (model / f"d{d:03d}" / f"f{i:03d}").touch()
    write_spec(tmp_path / "src", {})
    build(load_spec(tmp_path / "src" / "spec.toml"), out=tmp_path / "b", key=key.key)
    shutil.rmtree(model)
    code, peak, out = peak_rss("install", tmp_path / "b", "--trust", trust, "--prefix", tmp_path / "prefix", "--json")
    _assert_under(peak, f"install of {MAX_FILES - 1} files")
    assert code == 0 and json.loads(out)["files"] >= (MAX_FILES - 1) // 200 * 200, out


@pytest.mark.slow
def test_build_of_a_bundle_at_the_file_cap_stays_under_200mb(signer: tuple[KeyPair, Path], tmp_path: Path) -> None:
    """The real ``gapship build`` of 200,000 files (with the policy and the SBOM): the sources walk,
    the manifest, the SBOM that lists every file and the provenance that lists every input. Before the
    SBOM and the statement were streamed an entry at a time, this peaked near 400 MB; with them
    streamed, ``--check-against`` of it peaked at 243 MB while it kept the release's manifest."""
    key, _ = signer
    with _scratch(tmp_path) as scratch:
        model = scratch / "src" / "model"
        count = MAX_FILES - 2  # the policy and the SBOM make the cap
        for i in range(count):
            if i % 1000 == 0:
                (model / f"d{i // 1000:03d}").mkdir(parents=True)
            (model / f"d{i // 1000:03d}" / f"f{i % 1000:03d}").touch()
        spec = write_spec(scratch / "src", {})
        code, peak, out = peak_rss("build", spec, "--out", scratch / "b", "--key", key.private, "--json")
        _assert_under(peak, f"build of {MAX_FILES} files")
        assert code == 0, out
        manifest = Manifest.from_bytes((scratch / "b" / "manifest.json").read_bytes())
        assert sum(1 for _ in manifest.files()) == MAX_FILES
        del manifest
        # The independent rebuild of it: the same build, and the release's manifest beside it.
        code, peak, out = peak_rss("build", spec, "--check-against", scratch / "b", "--out", scratch / "re", "--json")
        _assert_under(peak, f"build --check-against of {MAX_FILES} files")
        assert code == 0 and json.loads(out)["check_against"]["identical"] is True, out


@pytest.mark.slow
def test_verify_with_roots_and_signatures_at_their_caps_beside_a_manifest_at_the_cap_stays_under_200mb(
        signer: tuple[KeyPair, Path], tmp_path: Path) -> None:
    """roots/ (64 files of 2 MiB) and signatures/ (64 of 64 KiB) at their caps, next to a manifest at
    the chunk cap: read before anything is checked, they are refused at the budget."""
    key, trust = signer
    bundle = tmp_path / "b"
    write_cap_bundle(bundle, key, files=entries_that_fit(chunks=MAX_CHUNKS), chunks=MAX_CHUNKS)
    for version in range(2, 2 + MAX_ROOT_FILES):
        _sparse(bundle / "roots" / f"{version}.root.json", MAX_ROOT_FILE_BYTES)
    for j in range(MAX_SIGNATURE_FILES - 1):
        _sparse(bundle / "signatures" / f"{j:064x}.ml-dsa-87.sig", MAX_SIGNATURE_BYTES)
    code, peak, out = peak_rss("verify", bundle, "--trust", trust, "--json")
    _assert_under(peak, "roots and signatures at their caps")
    assert code == 4 and "budget" in json.loads(out)["error"]["message"], out
