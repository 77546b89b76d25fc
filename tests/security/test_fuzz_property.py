"""Property: whatever is done to a real bundle, ``gapship install`` either installs exactly what the
signed manifest describes, or refuses with a documented exit code (2..7) and changes nothing under the
prefix. Never exit 1 (an internal error), never a traceback.

The seed is a small bundle made by gapship's own bundler. Hypothesis mutates it four ways: manifest
fields (then re-signs with the trusted key, as a compromised build would), manifest bytes (re-signed),
tar header bytes and payload bytes (chunk hashes recomputed and re-signed, so the content checks are
reached), and chunk bytes as damaged in transfer (not re-signed). Examples are derandomized so CI
runs the same ones every time; max_examples keeps the whole file near 20 s.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from attack_site import Template, build_real_bundle
from gapship.installer.errors import GapshipError
from gapship.installer.formats.manifest import Manifest, padded
from gapship.installer.kit import canonical_json
from gapship_testing import run
from hostile import chunk_entries, cut, sha256, snapshot, write_bundle

pytestmark = pytest.mark.slow  # hypothesis: 150 installs per property
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DOCUMENTED = {2, 3, 4, 5, 6, 7}
RECORDS = {"receipt.json", "manifest.json"}


@dataclass(frozen=True, repr=False)
class Seed:
    manifest: dict[str, Any]
    chunks: list[bytes]
    template: Template

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"Seed({len(self.chunks)} chunks, {self.manifest['payload_size']} bytes)"

    @property
    def payload(self) -> bytes:
        return b"".join(self.chunks)


@pytest.fixture(scope="session")
def seed(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Seed:
    base = tmp_path_factory.mktemp("fuzz-seed")
    files = {"config.json": b'{"hidden": 4}\n', "sub/weights.bin": bytes(range(256)) * 6, "empty.txt": b""}
    bundle = build_real_bundle(base, template.key, version="2.0.0", files=files, chunk_size=2048)
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    chunks = [p.read_bytes() for p in sorted((bundle / "chunks").iterdir())]
    return Seed(manifest, chunks, template)


# -- running one mutated bundle ----------------------------------------------------------------------


def _install(seed: Seed, tmp_path: Path, manifest_bytes: bytes, chunks: list[bytes], *, signed: bool) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        prefix = work / "prefix"
        shutil.copytree(seed.template.prefix, prefix, symlinks=True)
        bundle = write_bundle(work / "bundle", manifest_bytes, chunks, signers=[seed.template.key] if signed else [])
        before, bundle_before = snapshot(prefix), snapshot(bundle)
        result = run("install", bundle, "--trust", seed.template.trust, "--prefix", prefix, "--json")
        assert result.exit_code in DOCUMENTED | {0}, result.stdout
        out = json.loads(result.stdout)
        event(f"exit {result.exit_code}" + (f": {out['error']['message'][:40]}" if result.exit_code else ""))
        assert snapshot(bundle) == bundle_before, "the installer changed the bundle"
        if result.exit_code == 0:
            _assert_installed_exactly(prefix, before, manifest_bytes, out)
        else:
            assert out["error"]["code"] == result.exit_code and "\n" not in out["error"]["message"], out
            assert snapshot(prefix) == before
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _assert_installed_exactly(prefix: Path, before: dict[str, Any], manifest_bytes: bytes, out: dict[str, Any]) -> None:
    """Success: the version directory holds exactly the signed manifest's files, with their hashes and
    modes; ``current`` points at it; nothing else under the prefix changed."""
    m = Manifest.from_bytes(manifest_bytes)
    home = prefix / m.name
    after = snapshot(prefix)
    assert (home / "current").readlink() == Path(m.version)
    root = f"{m.name}/{m.version}/"
    allowed = {f"{m.name}/current", root[:-1], m.name, f"{m.name}/.lock"}  # the last two: a new name
    for rel, entry in after.items():
        # The host's anti-rollback state (docs/trust.md) records every successful install.
        if not rel.startswith(root) and rel not in allowed and not rel.startswith(".gapship"):
            assert before.get(rel) == entry, f"{rel} changed outside the new version"
    state = json.loads((prefix / ".gapship" / "state.json").read_bytes())
    assert state["bundles"][m.name]["highest_version"] == m.version
    if out["status"] == "already-installed":
        return
    files = {f.path: f for f in m.files()}
    seen = set()
    for rel, entry in after.items():
        if not rel.startswith(root) or entry[0] != "file":
            continue
        inner = rel[len(root):]
        if inner in RECORDS or inner.startswith("signatures/"):
            continue
        f = files[inner]  # KeyError: a file the manifest does not list
        mode = 0o444 if inner.startswith(("safeguards/", "sbom/")) else f.mode  # read-only on purpose (docs/safeguards.md, sbom.md)
        assert entry[1] == mode and sha256(entry[2]) == f.hash and len(entry[2]) == f.size, inner
        seen.add(inner)
    assert seen == set(files)


def _resign(manifest: dict[str, Any]) -> bytes:
    try:
        return canonical_json(manifest)
    except (UnicodeEncodeError, ValueError, TypeError):
        return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


# -- strategies ----------------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "", ".", "..", "/", "/etc/passwd", "models/tiny/../../x", "models/tiny//x", "models/tiny/./x",
    "models/tiny/a\x00b", "models\\tiny\\x", "models/tiny/CONFIG.JSON", "models/tiny/cafe\u0301",
    "models/tiny/\ufb01le", "safeguards/policy.toml", "models/tiny/" + "x" * 300, "00000.bin", "../00000.bin",
    "current", "1.0.0", "2.0.1", "v2", "sha512", "md5", "model", "dependencies", "scripts", "x\ny",
    "2026-01-01T00:00:00Z", "9999-99-99T99:99:99Z", "0" * 64, "f" * 96,
]
INTS = [0, 1, -1, 511, 512, 513, 1023, 1024, 2048, 2**31, 2**32, 2**32 + 512, 2**53 - 1, 2**53, 2**64, 0o4755,
        0o755, 0o644, 0o777]

json_scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(INTS), st.integers(), st.sampled_from(HOSTILE_STRINGS),
                         st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=5)


def _positions(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in the manifest tree: keys of objects and indices of lists."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path + (k,)
            yield from _positions(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield path + (i,)
            yield from _positions(v, path + (i,))


def _tweak(data: st.DataObject, old: Any) -> Any:
    """A value near ``old`` (more likely to pass the checks before it and reach deeper ones)."""
    if isinstance(old, bool) or old is None:
        return data.draw(json_values)
    if isinstance(old, int):
        return data.draw(st.one_of(st.integers(-600, 600).map(lambda d: old + d), st.sampled_from(INTS),
                                   st.sampled_from([old * 2, old + 2**32, old + 512, old - 512])))
    if isinstance(old, str):
        return data.draw(st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=3).map(lambda t: old + t),
                                   st.integers(0, max(len(old) - 1, 0)).map(lambda i: old[:i] + "X" + old[i + 1:])))
    return data.draw(json_values)


def _mutate_manifest(data: st.DataObject, manifest: dict[str, Any]) -> None:
    path = data.draw(st.sampled_from(list(_positions(manifest))))
    parent: Any = manifest
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    op = data.draw(st.sampled_from(["tweak", "tweak", "replace", "delete", "duplicate", "add"]))
    if op == "tweak":
        parent[last] = _tweak(data, parent[last])
    elif op == "replace":
        parent[last] = data.draw(json_values)
    elif op == "delete":
        del parent[last]
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(last, copy.deepcopy(parent[last]))
    elif isinstance(parent, dict):
        parent[data.draw(st.text(min_size=1, max_size=8))] = data.draw(json_values)


def _regions(manifest: dict[str, Any]) -> list[tuple[int, int]]:
    """The tar header regions of the payload (docs/format.md, "Payload"): before each file's data."""
    out, cursor = [], 0
    for comp in manifest["components"]:
        for f in comp["files"]:
            out.append((cursor, f["offset"]))
            cursor = padded(f["offset"] + f["size"])
    return out


def _flip_bytes(data: st.DataObject, payload: bytearray, lo: int, hi: int) -> None:
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(lo, hi - 1))
        payload[at] = data.draw(st.sampled_from([0, 0xFF, ord("/"), ord("."), ord("1"), payload[at] ^ 0x01,
                                                 data.draw(st.integers(0, 255))]))


def _fix_checksums(payload: bytearray, lo: int, hi: int, original: bytes) -> None:
    """Recompute the checksum of each ustar header block in [lo, hi) (a compromised build writes
    valid checksums), so the mutation reaches the checks behind tarfile's own."""
    for block in range(lo, hi, 512):
        if original[block + 257:block + 262] == b"ustar":
            payload[block + 148:block + 156] = b" " * 8
            payload[block + 148:block + 156] = b"%06o\x00 " % sum(payload[block:block + 512])


def _rechunked(seed: Seed, payload: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """A compromised build: the changed payload re-cut, re-hashed (and then re-signed by the caller)."""
    manifest = copy.deepcopy(seed.manifest)
    chunks = cut(payload, manifest["chunk_size"])
    manifest["chunks"] = chunk_entries(chunks)
    return manifest, chunks


# -- the properties ------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_mutated_manifest_fields_are_installed_exactly_or_refused(seed: Seed, tmp_path: Path, data: st.DataObject) -> None:
    manifest = copy.deepcopy(seed.manifest)
    for _ in range(data.draw(st.integers(1, 2))):
        _mutate_manifest(data, manifest)
    _install(seed, tmp_path, _resign(manifest), seed.chunks, signed=True)


@SETTINGS
@given(data=st.data())
def test_mutated_manifest_bytes_are_refused_or_harmless(seed: Seed, tmp_path: Path, data: st.DataObject) -> None:
    raw = bytearray(canonical_json(seed.manifest))
    op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if op == "flip":
        raw[at] = data.draw(st.integers(0, 255))
    elif op == "insert":
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"{", b"[", b'"', b"\\", b",", b" "]))
    elif op == "delete":
        del raw[at:at + data.draw(st.integers(1, 8))]
    else:
        del raw[at:]
    _install(seed, tmp_path, bytes(raw), seed.chunks, signed=True)


@SETTINGS
@given(data=st.data())
def test_mutated_tar_headers_are_installed_exactly_or_refused(seed: Seed, tmp_path: Path, data: st.DataObject) -> None:
    payload = bytearray(seed.payload)
    lo, hi = data.draw(st.sampled_from(_regions(seed.manifest)))
    _flip_bytes(data, payload, lo, hi)
    if data.draw(st.booleans()):
        _fix_checksums(payload, lo, hi, seed.payload)
    manifest, chunks = _rechunked(seed, bytes(payload))
    _install(seed, tmp_path, canonical_json(manifest), chunks, signed=True)


@SETTINGS
@given(data=st.data())
def test_mutated_payload_bytes_are_installed_exactly_or_refused(seed: Seed, tmp_path: Path, data: st.DataObject) -> None:
    payload = bytearray(seed.payload)
    _flip_bytes(data, payload, 0, len(payload))
    resign = data.draw(st.booleans())
    if resign:
        manifest, chunks = _rechunked(seed, bytes(payload))
        _install(seed, tmp_path, canonical_json(manifest), chunks, signed=True)
    else:
        chunks = cut(bytes(payload), seed.manifest["chunk_size"])
        _install(seed, tmp_path, canonical_json(seed.manifest), chunks, signed=True)


def test_seed_parses_and_a_broken_seed_raises_the_project_error(seed: Seed) -> None:
    """The control for the properties above: the seed itself parses, and a broken one raises the
    project's error (not a KeyError or TypeError)."""
    assert Manifest.from_bytes(canonical_json(seed.manifest)).name == "demo"
    broken = copy.deepcopy(seed.manifest)
    broken["components"][0]["files"][0] = []
    with pytest.raises(GapshipError):
        Manifest.from_bytes(canonical_json(broken))
