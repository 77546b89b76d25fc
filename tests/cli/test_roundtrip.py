"""The main path through the CLI: keygen, build, verify, install, inspect; then a second version,
a reinstall, and a different manifest claiming an installed version."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from gapship_testing import KeyPair, assert_error, noise, run, run_json, tree

MODEL_FILES = {
    "config.json": b'{"hidden": 4}\n',
    "sub/dir/weights.bin": noise(200_000, seed=1),
    "empty": b"",
    "run.sh": b"#!/bin/sh\necho hi\n",
}


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_round_trip_through_the_cli(tmp_path: Path, make_spec: Callable[..., Path]) -> None:
    keys = tmp_path / "keys"
    code, out = run_json("keygen", "release", "--out-dir", keys)
    assert code == 0, out
    keyid = out["keyid"]
    spec = make_spec(files=MODEL_FILES)
    os.chmod(spec.parent / "model" / "run.sh", 0o755)
    bundle = tmp_path / "bundle"

    code, out = run_json("build", spec, "--out", bundle, "--key", keys / "release.key", "--chunk-size", "4KiB")
    assert code == 0, out
    assert out["signer"] == keyid
    assert out["files"] == len(MODEL_FILES) + 2  # and the safeguards policy and the SBOM
    assert out["chunks"] == len(list((bundle / "chunks").iterdir()))
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(keys / "release.pub", trust)
    manifest_bytes = (bundle / "manifest.json").read_bytes()

    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 0, out
    assert out["signers"] == [keyid]
    assert out["manifest_digest"] == _sha256(manifest_bytes)
    chunk_count = len(list((bundle / "chunks").iterdir()))
    assert out["scope"] == "bundle" and out["chunks_checked"] == out["chunks_total"] == chunk_count
    assert out["bytes_checked"] == json.loads(manifest_bytes)["payload_size"]
    assert out["signatures"] == [{"file": f"{keyid}.ed25519.sig", "keyid": keyid, "status": "valid", "detail": "",
                                  "algorithm": "ed25519"}]

    prefix = tmp_path / "prefix"
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix)
    assert code == 0, out
    version_dir = prefix / "demo" / "1.0.0"
    assert out["status"] == "installed"
    assert out["bundle"] == {"name": "demo", "version": "1.0.0"}
    assert out["path"] == str(version_dir)
    assert out["signers"] == [keyid]
    assert out["manifest_digest"] == _sha256(manifest_bytes)
    assert out["previous"] is None
    policy = (spec.parent / "policy.toml").read_bytes()
    sbom = run("inspect", bundle, "--sbom").stdout_bytes
    assert out["bytes"] == sum(len(d) for d in MODEL_FILES.values()) + len(policy) + len(sbom)

    current = prefix / "demo" / "current"
    assert current.is_symlink() and os.readlink(current) == "1.0.0"
    for rel, data in MODEL_FILES.items():
        assert (current / "models" / "tiny" / rel).read_bytes() == data
    assert (current / "safeguards" / "policy.toml").read_bytes() == policy
    assert (version_dir / "models" / "tiny" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (version_dir / "models" / "tiny" / "config.json").stat().st_mode & 0o777 == 0o644
    sig_name = f"signatures/{keyid}.ed25519.sig"
    assert _files_under(version_dir) == {f"models/tiny/{rel}" for rel in MODEL_FILES} | {
        "safeguards/policy.toml", "receipt.json", "manifest.json", sig_name,
        "sbom/bom.cdx.json", "provenance/statement.json", f"provenance/{sig_name}"}  # docs/sbom.md
    assert (version_dir / "manifest.json").read_bytes() == manifest_bytes
    assert (version_dir / sig_name).read_bytes() == (bundle / sig_name).read_bytes()

    receipt = json.loads((version_dir / "receipt.json").read_text())
    assert receipt["manifest_digest"] == _sha256(manifest_bytes)
    assert receipt["signers"] == [keyid]
    assert receipt["bundle"] == {"name": "demo", "version": "1.0.0"}
    assert receipt["files"] == len(MODEL_FILES) + 2  # and the policy and the SBOM
    assert not [p for p in (prefix / "demo").iterdir() if p.name.startswith(".staging-")]

    code, out = run_json("inspect", bundle)
    assert code == 0, out
    assert out["verified"] is False
    assert out["bundle"] == {"name": "demo", "version": "1.0.0"}
    assert out["chunk_size"] == 4096
    assert [(c["kind"], c["name"], c["files"]) for c in out["components"]] == [
        ("model", "tiny", len(MODEL_FILES)), ("safeguards", "safeguards", 1), ("sbom", "sbom", 1)]
    assert out["signatures"] == [{"file": f"{keyid}.ed25519.sig"}]
    code, out = run_json("inspect", bundle, "--trust", trust)
    assert code == 0 and out["signatures"][0]["status"] == "valid", out


def test_human_output_names_the_bundle_and_signer(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                                  make_trust: Callable[..., Path],
                                                  make_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    bundle, trust = make_bundle(key), make_trust(key)
    result = run("verify", bundle, "--trust", trust)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"OK demo 1.0.0: signed by release.pub ({key.keyid[:16]})"
    result = run("install", bundle, "--trust", trust, "--prefix", tmp_path / "prefix")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"installed demo 1.0.0 at {tmp_path / 'prefix' / 'demo' / '1.0.0'}")
    result = run("inspect", bundle)
    assert result.exit_code == 0 and "not verified" in result.stdout


def test_second_version_switches_current_and_keeps_the_first(
        tmp_path: Path, make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
        make_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    trust = make_trust(key)
    prefix = tmp_path / "prefix"
    v1 = make_bundle(key, version="1.0.0", files={"w.bin": noise(5000, seed=1)})
    v2 = make_bundle(key, version="1.1.0", files={"w.bin": noise(6000, seed=2)})
    assert run_json("install", v1, "--trust", trust, "--prefix", prefix)[0] == 0
    first = tree(prefix / "demo" / "1.0.0")

    code, out = run_json("install", v2, "--trust", trust, "--prefix", prefix)
    assert code == 0, out
    assert (out["status"], out["previous"]) == ("installed", "1.0.0")
    assert os.readlink(prefix / "demo" / "current") == "1.1.0"
    assert (prefix / "demo" / "current" / "models" / "tiny" / "w.bin").read_bytes() == noise(6000, seed=2)
    assert tree(prefix / "demo" / "1.0.0") == first


def test_reinstall_of_the_same_bundle_needs_allow_reinstall(
        tmp_path: Path, make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
        make_bundle: Callable[..., Path]) -> None:
    """Anti-rollback (issue 4) refuses an equal version; with --allow-reinstall the same manifest is
    "already installed" and nothing under the version changes (the state file logs the override)."""
    key = make_key("release")
    bundle, trust = make_bundle(key), make_trust(key)
    prefix = tmp_path / "prefix"
    assert run_json("install", bundle, "--trust", trust, "--prefix", prefix)[0] == 0
    before = tree(prefix / "demo")

    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix)
    assert code == 5, out
    assert "already the highest version installed" in assert_error(out, code=5, kind="policy", subject="demo 1.0.0")
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix, "--allow-reinstall")
    assert code == 0, out
    assert (out["status"], out["previous"]) == ("already-installed", "1.0.0")
    assert tree(prefix / "demo") == before
    result = run("install", bundle, "--trust", trust, "--prefix", prefix, "--allow-reinstall")
    assert result.exit_code == 0 and result.stdout.startswith("already installed demo 1.0.0")


def test_rejects_a_different_manifest_for_an_installed_version(
        tmp_path: Path, make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
        make_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    trust = make_trust(key)
    prefix = tmp_path / "prefix"
    original = make_bundle(key, files={"w.bin": noise(5000, seed=1)})
    impostor = make_bundle(key, files={"w.bin": noise(5000, seed=2)})  # same name and version
    assert run_json("install", original, "--trust", trust, "--prefix", prefix)[0] == 0
    before = tree(prefix / "demo")

    code, out = run_json("install", impostor, "--trust", trust, "--prefix", prefix)
    assert code == 5  # anti-rollback first
    # Even when the admin allows a reinstall, a different manifest never replaces an installed version.
    code, out = run_json("install", impostor, "--trust", trust, "--prefix", prefix, "--allow-reinstall")
    assert code == 5
    message = assert_error(out, code=5, kind="policy", subject=str(prefix / "demo" / "1.0.0"))
    assert "demo 1.0.0 is already installed" in message and "different manifest" in message
    assert tree(prefix / "demo") == before
    result = run("install", impostor, "--trust", trust, "--prefix", prefix, "--allow-reinstall")
    assert result.exit_code == 5 and "different manifest" in result.stderr
