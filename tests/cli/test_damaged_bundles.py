"""Damaged and unsigned bundles, through ``verify`` and ``install``.

Each attack or fault gets its exit code, its --json error (kind, the chunk or file it names), a
one-line human message naming the same thing, and proof that nothing changed: the bundle is left as
it was by ``verify``, and ``install`` leaves a previous install (and ``current``) exactly as it was,
or, on a fresh prefix, installs nothing. Hostile tar streams and manifests live in tests/security/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gapship.bundler.build import build
from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.spec import load_spec
from gapship_testing import assert_error, noise, run, run_json, tree, write_spec

CHUNK = 1024


@dataclass(frozen=True)
class World:
    """Built once per module: keys, trust dirs, a pristine bundle, and a prefix holding 0.9.0."""

    bundle: Path  # demo 1.0.0, copied by each test before it is damaged
    trust: Path
    other_trust: Path  # a trust dir with an unrelated key only
    installed: Path  # a prefix where demo 0.9.0 is installed and current


def _build(base: Path, key: SigningKey, version: str, seed: int) -> Path:
    spec = write_spec(base / f"src-{version}", {"weights.bin": noise(40 * CHUNK, seed=seed)}, version=version)
    out = base / f"bundle-{version}"
    build(load_spec(spec), out=out, key=key, chunk_size=CHUNK)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("world")
    private, public, _ = keygen("release", base / "keys")
    _, other_public, _ = keygen("stranger", base / "keys")
    key = SigningKey.load(private)
    trust, other_trust = base / "trust", base / "other-trust"
    for folder, pub in ((trust, public), (other_trust, other_public)):
        folder.mkdir()
        shutil.copy(pub, folder)
    installed = base / "installed"
    old = _build(base, key, "0.9.0", seed=9)
    assert run_json("install", old, "--trust", trust, "--prefix", installed)[0] == 0
    return World(bundle=_build(base, key, "1.0.0", seed=10), trust=trust, other_trust=other_trust,
                 installed=installed)


# -- the damage: each takes a bundle dir, changes it, and returns what the error must name ------------


def _chunk(bundle: Path, index: int) -> Path:
    return bundle / "chunks" / f"{index:05d}.bin"


def flip_a_byte(bundle: Path) -> str:
    path = _chunk(bundle, 3)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(data)
    return "chunks/00003.bin"


def remove_a_chunk(bundle: Path) -> str:
    _chunk(bundle, 3).unlink()
    return "chunks/00003.bin"


def swap_two_chunks(bundle: Path) -> str:
    a, b = _chunk(bundle, 2), _chunk(bundle, 3)
    assert a.read_bytes() != b.read_bytes()  # or the swap would change nothing
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    return "chunks/00002.bin"


def add_an_extra_chunk(bundle: Path) -> str:
    name = f"{len(list((bundle / 'chunks').iterdir())):05d}.bin"
    shutil.copy(_chunk(bundle, 0), bundle / "chunks" / name)
    return f"chunks/{name}"


def truncate_a_chunk(bundle: Path) -> str:
    path = _chunk(bundle, 3)
    path.write_bytes(path.read_bytes()[:-1])
    return "chunks/00003.bin"


def extend_a_chunk(bundle: Path) -> str:
    with _chunk(bundle, 3).open("ab") as f:
        f.write(b"\0")
    return "chunks/00003.bin"


CHUNK_DAMAGE: dict[str, tuple[Callable[[Path], str], str]] = {
    "tampered_chunk": (flip_a_byte, "does not match its sha256 hash"),
    "missing_chunk": (remove_a_chunk, "is missing"),
    "reordered_chunks": (swap_two_chunks, "does not match its sha256 hash"),
    "extra_chunk": (add_an_extra_chunk, "is not part of this bundle"),
    "truncated_chunk": (truncate_a_chunk, "is truncated"),
    "extended_chunk": (extend_a_chunk, "is longer than"),
}


def tamper_manifest(bundle: Path) -> None:
    path = bundle / "manifest.json"
    data = path.read_bytes()
    assert data.count(b'"version":"1.0.0"') == 1
    path.write_bytes(data.replace(b'"version":"1.0.0"', b'"version":"1.0.1"'))  # still canonical


def remove_signatures(bundle: Path) -> None:
    shutil.rmtree(bundle / "signatures")


# -- running one command against a damaged bundle --------------------------------------------------


@dataclass(frozen=True)
class Case:
    mode: str  # verify | install-over-previous | install-fresh
    bundle: Path
    prefix: Path
    trust: Path


@pytest.fixture(params=["verify", "install-over-previous", "install-fresh"])
def case(request: pytest.FixtureRequest, world: World, tmp_path: Path) -> Case:
    """A private copy of the pristine bundle and, for install-over-previous, of the installed prefix."""
    bundle, prefix = tmp_path / "bundle", tmp_path / "prefix"
    shutil.copytree(world.bundle, bundle)
    if request.param == "install-over-previous":
        shutil.copytree(world.installed, prefix, symlinks=True)
    return Case(mode=request.param, bundle=bundle, prefix=prefix, trust=world.trust)


def _attempt(case: Case, trust: Path | None = None) -> tuple[int, dict[str, object], str]:
    """Run the command twice (--json, then human) and check that nothing changed; return both outputs."""
    trust = trust or case.trust
    bundle_before, prefix_before = tree(case.bundle), tree(case.prefix)
    if case.mode == "verify":
        args: tuple[str | Path, ...] = ("verify", case.bundle, "--trust", trust)
    else:
        args = ("install", case.bundle, "--trust", trust, "--prefix", case.prefix)
    code, out = run_json(*args)
    human = run(*args)
    assert human.exit_code == code
    assert human.stdout == ""
    assert human.stderr.startswith("gapship: error: ")
    line = human.stderr.splitlines()[0]
    assert tree(case.bundle) == bundle_before
    _assert_prefix_unchanged(case.prefix, prefix_before, case.mode)
    return code, out, line


def _assert_prefix_unchanged(prefix: Path, before: dict[str, bytes | str], mode: str) -> None:
    after = tree(prefix)
    if mode == "install-over-previous":
        assert after == before
        assert os.readlink(prefix / "demo" / "current") == "0.9.0"
    else:
        # A fresh prefix may keep the (empty) lock file of the failed attempt, and nothing else.
        assert set(after) <= {"demo/.lock"}, sorted(after)
        assert not (prefix / "demo" / "1.0.0").exists()


@pytest.mark.parametrize("attack", sorted(CHUNK_DAMAGE))
def test_rejects_damaged_chunks(case: Case, attack: str) -> None:
    damage, words = CHUNK_DAMAGE[attack]
    subject = damage(case.bundle)
    code, out, line = _attempt(case)
    assert code == 3
    message = assert_error(out, code=3, kind="integrity", subject=subject)
    assert subject in message and words in message
    assert subject in line and words in line


def test_rejects_tampered_manifest(case: Case) -> None:
    tamper_manifest(case.bundle)
    code, out, line = _attempt(case)
    assert code == 4
    message = assert_error(out, code=4, kind="trust", subject="signatures")
    assert "no valid signature" in message and ".ed25519.sig: invalid" in message
    assert ".ed25519.sig: invalid" in line


def test_rejects_untrusted_key(case: Case, world: World) -> None:
    code, out, line = _attempt(case, trust=world.other_trust)
    assert code == 4
    message = assert_error(out, code=4, kind="trust", subject="signatures")
    assert str(world.other_trust) in message and ".ed25519.sig: untrusted" in message
    assert ".ed25519.sig: untrusted" in line


def test_rejects_bundle_without_signatures(case: Case) -> None:
    remove_signatures(case.bundle)
    code, out, line = _attempt(case)
    assert code == 4
    message = assert_error(out, code=4, kind="trust", subject="signatures")
    assert message == "bundle has no signatures/ directory"
    assert "signatures/" in line


def test_rejects_bundle_with_empty_signatures(case: Case) -> None:
    for sig in (case.bundle / "signatures").iterdir():
        sig.unlink()
    code, out, line = _attempt(case)
    assert code == 4
    message = assert_error(out, code=4, kind="trust", subject="signatures")
    assert message.endswith("carries no signature")
