"""The SBOM and the provenance through the CLI (docs/sbom.md, docs/format.md 11.3 and 11.4): inspect
--sbom prints the bundled bytes, a tampered SBOM is refused like any file, the provenance's subjects
are the manifest and the chunks and bind it to its bundle, both are installed read-only, status lists
the packages; build --check-against confirms a rebuild made elsewhere and names the first difference."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from gapship.bundler.build import build
from gapship.bundler.spec import load_spec
from gapship.installer.formats.manifest import Manifest
from gapship.installer.sbom import SBOM_PATH
from gapship_testing import KeyPair, assert_error, gapship_script, noise, run, run_json, write_spec
from sbom_testing import three_wheels

CHUNK = 1024


@pytest.fixture
def key(make_key: Callable[[str], KeyPair]) -> KeyPair:
    return make_key("release")


@pytest.fixture
def bundle(tmp_path: Path, key: KeyPair) -> Path:
    spec = write_spec(tmp_path / "src", {"w.bin": noise(5000, seed=3), "config.json": b"{}\n"})
    out = tmp_path / "bundle"
    build(load_spec(spec), out=out, key=key.key, chunk_size=CHUNK, dependencies=three_wheels(tmp_path / "wheels"))
    return out


def _bundled_sbom(bundle: Path) -> bytes:
    """The SBOM's bytes cut out of the concatenated chunks at its signed offset."""
    m = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    entry = next(f for f in m.files() if f.path == SBOM_PATH)
    payload = b"".join((bundle / "chunks" / c.name).read_bytes() for c in m.chunks)
    return payload[entry.offset:entry.offset + entry.size]


def _flip_sbom_byte(bundle: Path) -> None:
    m = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    entry = next(f for f in m.files() if f.path == SBOM_PATH)
    pos = entry.offset + entry.size // 2
    chunk = bundle / "chunks" / m.chunks[pos // CHUNK].name
    data = bytearray(chunk.read_bytes())
    data[pos % CHUNK] ^= 0x01
    chunk.write_bytes(bytes(data))


def test_inspect_sbom_prints_exactly_the_bundled_bytes(bundle: Path, key: KeyPair,
                                                       make_trust: Callable[..., Path]) -> None:
    result = run("inspect", bundle, "--sbom")
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == _bundled_sbom(bundle)
    m = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    entry = next(f for f in m.files() if f.path == SBOM_PATH)
    assert hashlib.sha256(result.stdout_bytes).hexdigest() == entry.hash
    assert run("inspect", bundle, "--sbom", "--trust", make_trust(key)).stdout_bytes == result.stdout_bytes


def test_inspect_json_lists_the_packages_with_the_manifests_hashes(bundle: Path) -> None:
    code, out = run_json("inspect", bundle)
    assert code == 0, out
    m = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    hashes = {f.path: f.hash for f in m.files()}
    assert out["sbom"] == SBOM_PATH
    assert out["packages"] == [
        {"name": "alpha", "version": "1.2.0", "purl": "pkg:pypi/alpha@1.2.0", "license": "MIT OR Apache-2.0",
         "hash": "sha256:" + hashes["dependencies/wheels/alpha-1.2.0-py3-none-any.whl"]},
        {"name": "beta", "version": "2.0.1", "purl": "pkg:pypi/beta@2.0.1", "license": None,
         "hash": "sha256:" + hashes["dependencies/wheels/beta-2.0.1-py3-none-any.whl"]},
        {"name": "gamma", "version": "0.1", "purl": "pkg:pypi/gamma@0.1", "license": "BSD License with a twist",
         "hash": "sha256:" + hashes["dependencies/wheels/gamma-0.1-py3-none-any.whl"]},
    ]
    assert out["provenance"]["file"] == "provenance/statement.json"  # type: ignore[index]


def test_rejects_tampered_sbom(bundle: Path) -> None:
    _flip_sbom_byte(bundle)
    code, out = run_json("inspect", bundle, "--sbom")
    assert code == 3
    assert "sbom/bom.cdx.json" in assert_error(out, code=3, kind="integrity", subject=SBOM_PATH)
    assert run("inspect", bundle).exit_code == 3


def test_rejects_install_of_tampered_sbom(key: KeyPair, make_trust: Callable[..., Path],
                                          make_bundle: Callable[..., Path], tmp_path: Path) -> None:
    plain = make_bundle(key, files={"w.bin": noise(3000, seed=4)})
    _flip_sbom_byte(plain)
    code, out = run_json("install", plain, "--trust", make_trust(key), "--prefix", tmp_path / "prefix")
    assert code == 3, out
    assert not (tmp_path / "prefix" / "demo" / "1.0.0").exists()


def test_provenance_subjects_are_the_manifest_and_the_chunks(bundle: Path, key: KeyPair,
                                                             make_trust: Callable[..., Path]) -> None:
    manifest_bytes = (bundle / "manifest.json").read_bytes()
    m = Manifest.from_bytes(manifest_bytes)
    statement = json.loads((bundle / "provenance" / "statement.json").read_bytes())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [
        {"name": "manifest.json", "digest": {"sha256": hashlib.sha256(manifest_bytes).hexdigest()}},
        *({"name": f"chunks/{c.name}", "digest": {"sha256": c.hash}} for c in m.chunks)]
    build_def = statement["predicate"]["buildDefinition"]
    created = int(__import__("datetime").datetime.strptime(m.created, "%Y-%m-%dT%H:%M:%SZ")
                  .replace(tzinfo=__import__("datetime").timezone.utc).timestamp())
    assert build_def["internalParameters"]["SOURCE_DATE_EPOCH"] == created
    spec_bytes = (bundle.parent / "src" / "spec.toml").read_bytes()
    assert build_def["externalParameters"]["spec"]["digest"] == {"sha256": hashlib.sha256(spec_bytes).hexdigest()}
    inputs = {d["name"]: d for d in build_def["resolvedDependencies"]}
    assert set(inputs) == {f.path for f in m.files()} - {SBOM_PATH}
    assert all(inputs[f.path]["digest"] == {"sha256": f.hash} for f in m.files() if f.path != SBOM_PATH)
    assert inputs["dependencies/wheels/beta-2.0.1-py3-none-any.whl"]["uri"] == "pkg:pypi/beta@2.0.1"
    assert statement["predicate"]["runDetails"]["builder"]["version"]["gapship"]
    code, out = run_json("verify", bundle, "--trust", make_trust(key))
    assert code == 0, out
    assert out["provenance"] == {"signers": [key.keyid]}


def test_rejects_provenance_of_another_bundle(bundle: Path, key: KeyPair, make_trust: Callable[..., Path],
                                              tmp_path: Path) -> None:
    other = tmp_path / "other"
    spec = write_spec(tmp_path / "src2", {"w.bin": b"other"})
    build(load_spec(spec), out=other, key=key.key, chunk_size=CHUNK)
    shutil.rmtree(bundle / "provenance")
    shutil.copytree(other / "provenance", bundle / "provenance")  # validly signed, by the same key
    trust = make_trust(key)
    code, out = run_json("verify", bundle, "--trust", trust)
    assert "is not this bundle's" in assert_error(out, code=4, kind="trust", subject="provenance/statement.json")
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", tmp_path / "prefix")
    assert code == 4, out
    assert not (tmp_path / "prefix" / "demo" / "1.0.0").exists()


def test_rejects_provenance_with_a_changed_statement(bundle: Path, key: KeyPair, make_trust: Callable[..., Path]) -> None:
    path = bundle / "provenance" / "statement.json"
    path.write_bytes(path.read_bytes().replace(b'"gapship","build"', b'"gapship","BUILD"'))
    code, out = run_json("verify", bundle, "--trust", make_trust(key))
    assert code == 4, out


def test_rejects_provenance_without_signatures(bundle: Path, key: KeyPair, make_trust: Callable[..., Path]) -> None:
    shutil.rmtree(bundle / "provenance" / "signatures")
    code, out = run_json("verify", bundle, "--trust", make_trust(key))
    assert_error(out, code=4, kind="trust", subject="provenance/signatures")


def test_rejects_provenance_whose_signatures_is_a_file(bundle: Path, key: KeyPair,
                                                      make_trust: Callable[..., Path]) -> None:
    """Refused as the bundle's and parity's own signatures/ are (it used to end as an internal error)."""
    shutil.rmtree(bundle / "provenance" / "signatures")
    (bundle / "provenance" / "signatures").write_bytes(b"not a folder")
    code, out = run_json("verify", bundle, "--trust", make_trust(key))
    message = assert_error(out, code=4, kind="trust", subject="provenance/signatures")
    assert message == "provenance/signatures is not a directory"


def test_bundle_without_provenance_still_installs(bundle: Path, key: KeyPair, make_trust: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    """An older bundle (or one whose provenance was stripped): the provenance decides nothing at a site."""
    shutil.rmtree(bundle / "provenance")
    code, out = run_json("verify", bundle, "--trust", make_trust(key))
    assert code == 0 and out["provenance"] is None, out


def test_sign_adds_a_provenance_signature(bundle: Path, make_key: Callable[[str], KeyPair],
                                          make_trust: Callable[..., Path]) -> None:
    second = make_key("second")
    assert run("sign", bundle, "--key", second.private).exit_code == 0
    assert len(os.listdir(bundle / "provenance" / "signatures")) == 2
    code, out = run_json("verify", bundle, "--trust", make_trust(second))
    assert code == 0 and out["provenance"] == {"signers": [second.keyid]}, out


def test_sbom_and_provenance_are_installed_read_only_and_status_lists_packages(
        tmp_path: Path, key: KeyPair, make_trust: Callable[..., Path], make_bundle: Callable[..., Path]) -> None:
    plain = make_bundle(key, files={"w.bin": b"w"})
    prefix, trust = tmp_path / "prefix", make_trust(key)
    code, out = run_json("install", plain, "--trust", trust, "--prefix", prefix)
    assert code == 0, out
    version = prefix / "demo" / "1.0.0"
    for rel, mode in (("sbom", 0o555), (SBOM_PATH, 0o444), ("provenance", 0o555),
                      ("provenance/statement.json", 0o444), ("provenance/signatures", 0o555),
                      (f"provenance/signatures/{key.keyid}.ed25519.sig", 0o444)):
        assert (version / rel).stat().st_mode & 0o7777 == mode, rel
    assert (version / SBOM_PATH).read_bytes() == run("inspect", plain, "--sbom").stdout_bytes
    assert (version / "provenance" / "statement.json").read_bytes() == (plain / "provenance" / "statement.json").read_bytes()
    code, status = run_json("status", "--prefix", prefix)
    assert code == 0, status
    entry = status["bundles"][0]["versions"][0]  # type: ignore[index]
    assert entry["packages"] == [] and entry["sbom"] == str(version / SBOM_PATH)
    # installing again adopts the directory: the read-only SBOM and the provenance are checked, not rewritten
    code, out = run_json("install", plain, "--trust", trust, "--prefix", prefix, "--allow-reinstall")
    assert code == 0 and out["status"] == "already-installed", out


def test_rejects_adopting_a_version_whose_provenance_was_changed(
        tmp_path: Path, key: KeyPair, make_trust: Callable[..., Path], make_bundle: Callable[..., Path]) -> None:
    plain = make_bundle(key, files={"w.bin": b"w"})
    prefix, trust = tmp_path / "prefix", make_trust(key)
    assert run("install", plain, "--trust", trust, "--prefix", prefix).exit_code == 0
    statement = prefix / "demo" / "1.0.0" / "provenance" / "statement.json"
    os.chmod(statement, 0o644)
    statement.write_bytes(statement.read_bytes().replace(b"gapship", b"GAPSHIP", 1))
    os.chmod(statement, 0o444)
    code, out = run_json("install", plain, "--trust", trust, "--prefix", prefix, "--allow-reinstall")
    assert code == 3 and "provenance/statement.json" in out["error"]["message"], out  # type: ignore[index]


# -- independent rebuilds --------------------------------------------------------------------------


def _machine(root: Path, files: dict[str, bytes]) -> Path:
    """A "machine": the same inputs in a folder of its own (the spec, model and policy at other paths)."""
    return write_spec(root / "work" / "release", files)


def test_check_against_passes_on_a_rebuild_elsewhere_with_another_umask(tmp_path: Path, key: KeyPair) -> None:
    files = {"w.bin": noise(70_000, seed=9), "sub/config.json": b"{}\n", "run.sh": b"#!/bin/sh\n"}
    first = _machine(tmp_path / "a", files)
    os.chmod(first.parent / "model" / "run.sh", 0o755)
    release = tmp_path / "a" / "out" / "release"
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1767225600"}
    subprocess.run([str(gapship_script()), "build", str(first), "--out", str(release), "--key", str(key.private),
                    "--chunk-size", "16KiB"], check=True, env=env, capture_output=True)
    second = _machine(tmp_path / "b" / "deeper" / "elsewhere", files)
    os.chmod(second.parent / "model" / "run.sh", 0o755)
    rest = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}  # the release's own time is used
    result = subprocess.run(["bash", "-c", 'umask 077 && cd "$1" && exec "$2" build spec.toml --check-against "$3" --json',
                             "_", str(second.parent), str(gapship_script()), str(release)],
                            env=rest, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    out = json.loads(result.stdout)
    assert out["check_against"]["identical"] is True
    assert out["check_against"]["source_date_epoch"] == 1767225600
    # a changed input: exit 3, naming the first file that differs
    (second.parent / "model" / "sub" / "config.json").write_bytes(b'{"changed": 1}\n')
    failed = subprocess.run([str(gapship_script()), "build", str(second), "--check-against", str(release), "--json"],
                            env=rest, capture_output=True, text=True)
    assert failed.returncode == 3, failed.stderr
    error = json.loads(failed.stdout)["error"]
    assert error["subject"] == "models/tiny/sub/config.json" and "differs" in error["message"]


def test_check_against_names_the_first_differing_file(tmp_path: Path, key: KeyPair) -> None:
    spec = write_spec(tmp_path / "src", {"a.bin": b"a", "b.bin": b"b", "c.bin": b"c"})
    release = tmp_path / "release"
    assert run("build", spec, "--out", release, "--key", key.private, "--chunk-size", "1KiB").exit_code == 0
    code, out = run_json("build", spec, "--check-against", release)
    assert code == 0 and out["check_against"]["identical"] is True, out  # type: ignore[index]
    (tmp_path / "src" / "model" / "b.bin").write_bytes(b"B")
    (tmp_path / "src" / "model" / "c.bin").write_bytes(b"C")
    code, out = run_json("build", spec, "--check-against", release)
    message = assert_error(out, code=3, kind="integrity", subject="models/tiny/b.bin")
    assert "models/tiny/b.bin differs (hash" in message
    (tmp_path / "src" / "model" / "d.bin").write_bytes(b"d")
    (tmp_path / "src" / "model" / "b.bin").write_bytes(b"b")
    (tmp_path / "src" / "model" / "c.bin").write_bytes(b"c")
    code, out = run_json("build", spec, "--check-against", release)
    assert "models/tiny/d.bin" in assert_error(out, code=3, kind="integrity", subject="models/tiny/d.bin")


def test_check_against_keeps_the_rebuild_only_with_out(tmp_path: Path, key: KeyPair) -> None:
    spec = write_spec(tmp_path / "src", {"a.bin": b"a"})
    release = tmp_path / "release"
    assert run("build", spec, "--out", release, "--key", key.private).exit_code == 0
    kept = tmp_path / "rebuilt"
    assert run("build", spec, "--check-against", release, "--out", kept).exit_code == 0
    assert (kept / "manifest.json").read_bytes() == (release / "manifest.json").read_bytes()
    assert run("build", spec, "--out", tmp_path / "x").exit_code == 2  # --key is needed without --check-against


def test_inspect_reads_a_manifest_without_its_chunks(bundle: Path) -> None:
    """A pipeline inspects the manifest before the chunks arrive: no packages then, and no error."""
    shutil.rmtree(bundle / "chunks")
    code, out = run_json("inspect", bundle)
    assert code == 0, out
    assert out["packages"] is None and out["sbom"] == SBOM_PATH
    code, out = run_json("inspect", bundle, "--sbom")
    assert code == 3, out  # the SBOM itself was asked for: its chunk is missing


def test_sign_sigstore_also_signs_the_provenance(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site that trusts only a CI identity accepts the provenance by that identity too. The network
    steps (Fulcio, Rekor, OIDC) are replaced by a stand-in that records which bytes it signed."""
    from gapship.bundler import sign as sign_module

    class Signed:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def to_json(self) -> str:
            return json.dumps({"over": hashlib.sha256(self.data).hexdigest()})

    monkeypatch.setattr(sign_module, "_require_sigstore_signing", lambda: None)
    monkeypatch.setattr(sign_module, "_given_or_ambient_identity", lambda token: "identity")
    monkeypatch.setattr(sign_module, "_trust_config", lambda: None)
    monkeypatch.setattr(sign_module, "_sign", lambda config, token, data: Signed(data))
    monkeypatch.setattr(sign_module, "_certificate_identity", lambda signed: ("ci@example.org", "https://issuer.example"))
    signature, _ = sign_module.sign_bundle_sigstore(bundle, identity_token="token")
    name = signature.file.rsplit("/", 1)[-1]
    statement = (bundle / "provenance" / "statement.json").read_bytes()
    manifest = (bundle / "manifest.json").read_bytes()
    assert json.loads((bundle / "provenance" / "signatures" / name).read_bytes()) == \
        {"over": hashlib.sha256(statement).hexdigest()}
    assert json.loads((bundle / "signatures" / name).read_bytes()) == {"over": hashlib.sha256(manifest).hexdigest()}
