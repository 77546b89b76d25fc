"""Parity chunks, the damage report and ``gapship repair`` (docs/format.md section 12, docs/cli.md).

The fixture bundle has 41 data chunks of 1000 bytes (the last one 960) and 25% parity: 6 interleaved
groups (k = 7, 7, 7, 7, 7, 6; data chunk i in group i mod 6), m = 2 each, 12 parity chunks. Everything is real: zfec, Ed25519
signatures, chunk files on disk, the CLI in a subprocess-free CliRunner or, for SIGKILL, a real process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from gapship.bundler.build import build
from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.parity import write_parity, write_parity_signature
from gapship.bundler.spec import load_spec
from gapship.installer.bundle.files import read_raw_bundle
from gapship.installer.bundle.parity import load_parity
from gapship.installer.bundle.repair import repair
from gapship.installer.formats.manifest import Manifest
from gapship.installer.kit import canonical_json
from gapship.installer.trust import TrustStore, verify_manifest
from gapship_testing import gapship_script, noise, run, run_json, tree, write_spec

CHUNK = 1000
WEIGHTS = 33 * 1024 + 100  # with the policy and the SBOM, a 40960-byte payload: 41 chunks
N = 41
GROUPS, M = 6, 2


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("parity")
    private, public, _ = keygen("release", base / "keys")
    trust = base / "trust"
    trust.mkdir()
    shutil.copy(public, trust)
    spec = write_spec(base / "src", {"weights.bin": noise(WEIGHTS, seed=5)})
    bundle = base / "bundle"
    build(load_spec(spec), out=bundle, key=SigningKey.load(private), chunk_size=CHUNK, parity=Fraction(1, 4))
    return bundle, trust, private


@pytest.fixture
def bundle(pristine: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine[0], tmp_path / "bundle"))


@pytest.fixture
def trust(pristine: tuple[Path, Path, Path]) -> Path:
    return pristine[1]


def data(bundle: Path, i: int) -> Path:
    return bundle / "chunks" / f"{i:05d}.bin"


def par(bundle: Path, j: int) -> Path:
    return bundle / "parity" / f"{j:05d}.bin"


def layout(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "parity" / "layout.json").read_bytes())  # type: ignore[no-any-return]


def snapshot(bundle: Path) -> dict[str, bytes | str]:
    return {k: v for k, v in tree(bundle).items() if k.startswith(("chunks/", "parity/"))}


def library_repair(bundle: Path, trust: Path, **kw: Any) -> Any:
    verified = verify_manifest(read_raw_bundle(bundle), trust=TrustStore.from_dir(trust))
    parity = load_parity(bundle, verified)
    assert parity is not None
    return repair(bundle, verified, parity, **kw)


def test_build_writes_interleaved_groups_with_a_signed_layout(bundle: Path, trust: Path) -> None:
    doc = layout(bundle)
    manifest = (bundle / "manifest.json").read_bytes()
    assert doc["manifest_digest"] == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert [(g["k"], g["m"]) for g in doc["groups"]] == [(7, M)] * 5 + [(6, M)]
    assert len(doc["parity"]) == GROUPS * M
    for j, p in enumerate(doc["parity"]):
        assert p["size"] == CHUNK and p["hash"] == hashlib.sha256(par(bundle, j).read_bytes()).hexdigest()
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 0 and out["parity"]["parity_chunks"] == 12  # type: ignore[index]


def test_each_chunk_of_a_group_lost_is_rebuilt(bundle: Path, trust: Path) -> None:
    before = snapshot(bundle)
    for i in range(0, N, GROUPS):  # every data chunk of group 0, one at a time, then a parity chunk
        data(bundle, i).unlink()
        assert library_repair(bundle, trust).rebuilt == (f"chunks/{i:05d}.bin",)
    par(bundle, 0).unlink()
    assert library_repair(bundle, trust).rebuilt == ("parity/00000.bin",)
    assert snapshot(bundle) == before


def test_m_lost_in_one_group_are_rebuilt_and_install_byte_for_byte(bundle: Path, trust: Path, tmp_path: Path) -> None:
    reference = tmp_path / "ref"
    assert run("install", shutil.copytree(bundle, tmp_path / "copy"), "--trust", trust, "--prefix", reference).exit_code == 0
    data(bundle, 40).unlink()  # group 4: its last data chunk (the short one) and one of its parity chunks
    par(bundle, 4 * M + 1).write_bytes(b"\0" * CHUNK)
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 3
    assert {(p["chunk"], p["kind"], p["group"]) for p in out["problems"]} == {  # type: ignore[union-attr]
        ("chunks/00040.bin", "data", 4), ("parity/00009.bin", "parity", 4)}
    assert out["parity"]["repairable"] is True  # type: ignore[index]
    assert out["parity"]["damaged_groups"][0]["lost"] == M  # type: ignore[index]
    prefix = tmp_path / "prefix"
    refused = run("install", bundle, "--trust", trust, "--prefix", prefix)
    assert refused.exit_code == 3 and "gapship repair" in refused.stderr
    result = run("install", bundle, "--trust", trust, "--prefix", prefix, "--repair")
    assert result.exit_code == 0, result.stderr
    assert tree(prefix / "demo" / "1.0.0" / "models") == tree(reference / "demo" / "1.0.0" / "models")
    assert run("verify", bundle, "--trust", trust).exit_code == 0


def test_rejects_repair_of_m_plus_one_lost_and_names_them(bundle: Path, trust: Path) -> None:
    for i in (2, 8, 14):  # three of group 2, which has two parity chunks
        data(bundle, i).unlink()
    data(bundle, 0).unlink()  # and one of group 0, which can be rebuilt
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 3
    groups = {g["group"]: g for g in out["parity"]["damaged_groups"]}  # type: ignore[index]
    assert (groups[2]["repairable"], groups[2]["needed"]) == (False, 1)
    assert (groups[0]["repairable"], groups[0]["needed"]) == (True, 0)
    code, out = run_json("repair", bundle, "--trust", trust)
    assert code == 3
    assert out["rebuilt"] == ["chunks/00000.bin"]
    assert out["unrepairable"] == [f"chunks/{i:05d}.bin" for i in (2, 8, 14)]
    assert "chunks/00002.bin" in out["error"]["message"]  # type: ignore[index]
    text = run("repair", bundle, "--trust", trust)
    assert text.exit_code == 3 and "1 more of its chunks must arrive" in text.stderr


def test_a_run_of_consecutive_chunks_lost_is_rebuilt(bundle: Path, trust: Path) -> None:
    before = snapshot(bundle)
    for i in range(20, 20 + GROUPS * M):  # one lost volume: 12 consecutive chunks, 2 in each group
        data(bundle, i).unlink()
    code, out = run_json("repair", bundle, "--trust", trust)
    assert code == 0 and len(out["rebuilt"]) == 12  # type: ignore[arg-type]
    assert snapshot(bundle) == before


def test_damaged_parity_chunk_is_reported_checked_alone_and_rebuilt(bundle: Path, trust: Path) -> None:
    good = par(bundle, 5).read_bytes()
    assert run("verify", bundle, "--trust", trust, "--chunk", par(bundle, 5)).exit_code == 0
    par(bundle, 5).write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    alone = run("verify", bundle, "--trust", trust, "--chunk", par(bundle, 5))
    assert alone.exit_code == 3 and "parity/00005.bin does not match its sha256 hash in the parity layout" in alone.stderr
    assert run("repair", bundle, "--trust", trust).exit_code == 0
    assert par(bundle, 5).read_bytes() == good


def test_rejects_parity_from_another_bundle(bundle: Path, trust: Path, pristine: tuple[Path, Path, Path],
                                            tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "other", {"weights.bin": noise(WEIGHTS, seed=6)})
    other = tmp_path / "other-bundle"
    build(load_spec(spec), out=other, key=SigningKey.load(pristine[2]), chunk_size=CHUNK, parity=Fraction(1, 4))
    shutil.rmtree(bundle / "parity")
    shutil.copytree(other / "parity", bundle / "parity")
    data(bundle, 0).unlink()
    for command in ("verify", "repair"):
        code, out = run_json(command, bundle, "--trust", trust)
        assert code == 4 and "not this bundle's manifest" in out["error"]["message"]  # type: ignore[index]
    assert not data(bundle, 0).exists()


def test_rejects_parity_chunks_swapped_or_renamed(bundle: Path, trust: Path) -> None:
    before = snapshot(bundle)
    a, b = par(bundle, 0).read_bytes(), par(bundle, 1).read_bytes()
    par(bundle, 0).write_bytes(b)
    par(bundle, 1).write_bytes(a)
    par(bundle, 2).rename(bundle / "parity" / "00099.bin")
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 3
    assert {(p["chunk"], p["problem"]) for p in out["problems"]} == {  # type: ignore[union-attr]
        ("parity/00000.bin", "damaged"), ("parity/00001.bin", "damaged"), ("parity/00002.bin", "missing"),
        ("parity/00099.bin", "extra")}
    code, out = run_json("repair", bundle, "--trust", trust)  # rebuilt from the data; the stray file stays
    assert code == 3 and out["extra"] == ["parity/00099.bin"]
    (bundle / "parity" / "00099.bin").unlink()
    assert snapshot(bundle) == before


def test_rejects_a_layout_that_does_not_add_up(bundle: Path, trust: Path, pristine: tuple[Path, Path, Path]) -> None:
    doc = layout(bundle)
    doc["groups"][0]["k"] = 6  # 41 chunks in 6 groups put 7 in group 0
    raw = canonical_json(doc)
    (bundle / "parity" / "layout.json").write_bytes(raw)
    code, out = run_json("verify", bundle, "--trust", trust)  # unsigned change: the signature no longer holds
    assert code == 4
    sigs = bundle / "parity" / "signatures"
    shutil.rmtree(sigs)
    sigs.mkdir()
    write_parity_signature(bundle / "parity", raw, SigningKey.load(pristine[2]))  # signed, yet wrong
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 6 and "does not add up" in out["error"]["message"]  # type: ignore[index]
    assert run("repair", bundle, "--trust", trust).exit_code == 6


def test_rejects_a_rebuilt_chunk_with_the_wrong_content(bundle: Path, trust: Path,
                                                      pristine: tuple[Path, Path, Path]) -> None:
    """A layout signed by the release key over parity computed from other bytes (a faulty builder):
    every chunk the repair reads matches its hash, yet the chunk it rebuilds does not; nothing is written."""
    original = data(bundle, 0).read_bytes()
    data(bundle, 0).write_bytes(bytes(len(original)))  # what the faulty builder encoded
    shutil.rmtree(bundle / "parity")
    (bundle / "parity").mkdir()
    manifest_bytes = (bundle / "manifest.json").read_bytes()
    write_parity(bundle, bundle / "parity", Manifest.from_bytes(manifest_bytes), manifest_bytes, share=Fraction(1, 4),
                 keys=[SigningKey.load(pristine[2])], check=False)
    data(bundle, 0).write_bytes(original)
    data(bundle, 6).unlink()  # group 0: rebuilt from chunk 0 and a parity chunk made from the other bytes
    code, out = run_json("repair", bundle, "--trust", trust)
    assert code == 3
    assert "rebuilt chunks/00006.bin does not match its sha256 hash in the signed manifest" in out["error"]["message"]  # type: ignore[index]
    assert not data(bundle, 6).exists()
    assert not (bundle / ".gapship-repair").exists()


def test_repair_out_leaves_read_only_bundle_alone(bundle: Path, trust: Path, tmp_path: Path) -> None:
    data(bundle, 9).unlink()
    before = tree(bundle)
    out = tmp_path / "repaired"
    code, result = run_json("repair", bundle, "--trust", trust, "--out", out)
    assert code == 0 and result["rebuilt"] == ["chunks/00009.bin"]
    assert tree(bundle) == before
    assert run("verify", out, "--trust", trust).exit_code == 0
    assert os.stat(data(out, 0)).st_ino == os.stat(data(bundle, 0)).st_ino  # hard-linked, not copied


def test_parity_for_an_existing_bundle_keeps_the_manifest_and_sign_signs_the_layout(
        pristine: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(pristine[0], tmp_path / "b"))
    shutil.rmtree(bundle / "parity")
    manifest = (bundle / "manifest.json").read_bytes()
    code, out = run_json("parity", bundle, "--parity", "10%", "--key", pristine[2])
    assert code == 0 and out["parity_chunks"] == 6 and out["groups"] == 3  # 41 chunks: k = 14, 14, 13; m = 2
    assert (bundle / "manifest.json").read_bytes() == manifest
    assert run("verify", bundle, "--trust", pristine[1]).exit_code == 0
    assert run("parity", bundle, "--parity", "10%", "--key", pristine[2]).exit_code == 2  # already there
    other, public, _ = keygen("second", tmp_path / "k2")
    assert run("sign", bundle, "--key", other).exit_code == 0
    assert len(os.listdir(bundle / "parity" / "signatures")) == 2
    data(bundle, 3).unlink()
    # a second trust directory that knows only the new key: the layout's second signature is what counts
    only_new = tmp_path / "trust2"
    only_new.mkdir()
    shutil.copy(public, only_new)
    assert run("repair", bundle, "--trust", only_new).exit_code == 0


def test_rejects_parity_of_a_damaged_bundle(pristine: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(pristine[0], tmp_path / "b"))
    shutil.rmtree(bundle / "parity")
    data(bundle, 7).write_bytes(b"\1" * CHUNK)
    result = run("parity", bundle, "--parity", "10%", "--key", pristine[2])
    assert result.exit_code == 3 and "chunks/00007.bin" in result.stderr
    assert sorted(os.listdir(bundle)) == ["chunks", "manifest.json", "provenance", "signatures"]


@pytest.mark.slow
def test_sigkill_during_repair_then_rerun_finishes(tmp_path: Path, pristine: tuple[Path, Path, Path]) -> None:
    spec = write_spec(tmp_path / "src", {"weights.bin": noise(64 * 1024 * 1024, seed=9)})
    base = tmp_path / "big"
    build(load_spec(spec), out=base, key=SigningKey.load(pristine[2]), chunk_size=1024 * 1024, parity=Fraction(1, 4))
    good = {name: (base / "chunks" / name).read_bytes() for name in os.listdir(base / "chunks")}
    interrupted = 0
    for when in ("writing", "writing", 0.4, 0.7):  # as soon as a rebuilt chunk is being written, or after a delay
        bundle = Path(shutil.copytree(base, tmp_path / f"b{interrupted}-{when}"))
        lost = sorted(good)[10:22]  # 12 consecutive chunks
        for name in lost:
            (bundle / "chunks" / name).unlink()
        proc = subprocess.Popen([str(gapship_script()), "repair", str(bundle), "--trust", str(pristine[1])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        if when == "writing":
            work = bundle / ".gapship-repair"
            while time.monotonic() < deadline and proc.poll() is None and not (work.is_dir() and any(work.iterdir())):
                time.sleep(0.001)
        else:
            time.sleep(float(when))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for name in os.listdir(bundle / "chunks"):  # never a partial chunk under its real name
            assert (bundle / "chunks" / name).read_bytes() == good[name]
        interrupted += (bundle / ".gapship-repair").exists()
        assert run("repair", bundle, "--trust", pristine[1]).exit_code == 0
        assert not (bundle / ".gapship-repair").exists()
        assert {n: (bundle / "chunks" / n).read_bytes() for n in os.listdir(bundle / "chunks")} == good
    assert interrupted, "no kill landed while the repair was writing: the test did not test anything"


def _without_zfec(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a process where zfec cannot be imported (an aarch64 site without the extra)."""
    code = ("import sys; sys.modules['zfec'] = None; from gapship.bundler.cli.main import cli; "
            "cli(prog_name='gapship')")
    return subprocess.run([str(Path(os.sys.executable)), "-c", code, *map(str, args)], capture_output=True, text=True)


def test_without_zfec_verify_works_and_repair_names_the_extra(bundle: Path, trust: Path, tmp_path: Path,
                                                               pristine: tuple[Path, Path, Path]) -> None:
    assert _without_zfec("verify", bundle, "--trust", trust).returncode == 0
    data(bundle, 0).unlink()
    assert _without_zfec("verify", bundle, "--trust", trust).returncode == 3
    result = _without_zfec("repair", bundle, "--trust", trust)
    assert result.returncode == 7 and "install gapship[parity]" in result.stderr
    assert not data(bundle, 0).exists() and not (bundle / ".gapship-repair").exists()
    spec = write_spec(tmp_path / "src", {"w.bin": b"x" * 100})
    built = _without_zfec("build", spec, "--out", tmp_path / "out", "--key", pristine[2], "--parity", "10%")
    assert built.returncode == 7 and "gapship[parity]" in built.stderr and not (tmp_path / "out").exists()
