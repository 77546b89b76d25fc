"""``gapship build``: what it refuses (with exit 2 and a message naming the problem, leaving nothing
behind), chunk-size parsing, reproducible output, and paths that need pax headers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from gapship_testing import POLICY, KeyPair, assert_error, noise, run, run_json, tree


def _build(spec: Path, out: Path, key: KeyPair, *extra: str) -> tuple[int, dict[str, object]]:
    return run_json("build", spec, "--out", out, "--key", key.private, "--chunk-size", "1KiB", *extra)


def _assert_nothing_written(spec: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if ".partial-" in p.name]


BAD_POLICIES = {
    "malformed_toml": (b"schema_version = \n", "not valid TOML"),
    "unknown_key": (b"colour = 'blue'\n" + POLICY, "policy has unknown key 'colour'"),
    "unknown_site_key": (POLICY.replace(b"[sites.test-site]\n", b"[sites.test-site]\nfirewall = true\n"),
                         "sites.test-site has unknown key 'firewall'"),
    "site_undeclared": (POLICY.replace(b'sites = ["test-site"]', b'sites = ["nowhere"]'),
                        "models.tiny.sites names site 'nowhere', which is not declared under [sites]"),
    "model_enabled_at_no_site": (POLICY.replace(b'sites = ["test-site"]', b"sites = []"),
                                 "models.tiny.sites must name at least one site"),
    "wrong_schema_version": (POLICY.replace(b"schema_version = 1", b"schema_version = 2"),
                             "schema_version must be 1, not 2"),
}


@pytest.mark.parametrize("problem", sorted(BAD_POLICIES))
def test_rejects_bad_policy(tmp_path: Path, make_key: Callable[[str], KeyPair], make_spec: Callable[..., Path],
                            problem: str) -> None:
    policy, words = BAD_POLICIES[problem]
    spec = make_spec(policy=policy)
    out = tmp_path / "out"
    code, result = _build(spec, out, make_key("release"))
    assert code == 2
    message = assert_error(result, code=2, kind="usage", subject=str(spec.parent / "policy.toml"))
    assert message.startswith(f"{spec.parent / 'policy.toml'}: ") and words in message
    _assert_nothing_written(spec, out)


def test_rejects_model_the_policy_does_not_enable(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                                  make_spec: Callable[..., Path]) -> None:
    spec = make_spec(model="other")  # the policy only has [models.tiny]
    out = tmp_path / "out"
    code, result = _build(spec, out, make_key("release"))
    assert code == 2
    message = assert_error(result, code=2, kind="usage", subject="other")
    assert message == "policy enables model 'other' at no site (add [models.other])"
    _assert_nothing_written(spec, out)


def test_rejects_missing_model_source(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                      make_spec: Callable[..., Path]) -> None:
    spec = make_spec()
    source = spec.parent / "model"
    for f in source.iterdir():
        f.unlink()
    source.rmdir()
    out = tmp_path / "out"
    code, result = _build(spec, out, make_key("release"))
    assert code == 2
    assert assert_error(result, code=2, kind="usage", subject=str(source)) == f"model source {source} does not exist"
    _assert_nothing_written(spec, out)


def test_rejects_missing_policy_file(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                     make_spec: Callable[..., Path]) -> None:
    spec = make_spec()
    policy = spec.parent / "policy.toml"
    policy.unlink()
    out = tmp_path / "out"
    code, result = _build(spec, out, make_key("release"))
    assert code == 2
    assert str(policy) in assert_error(result, code=2, kind="usage", subject=str(policy))
    _assert_nothing_written(spec, out)


@pytest.mark.parametrize("target", ["weights.bin", "/etc", "."])
def test_rejects_symlink_in_model_dir(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                      make_spec: Callable[..., Path], target: str) -> None:
    spec = make_spec()
    link = spec.parent / "model" / "link"
    os.symlink(target, link)
    out = tmp_path / "out"
    code, result = _build(spec, out, make_key("release"))
    assert code == 2
    message = assert_error(result, code=2, kind="usage", subject=str(link))
    assert message == f"{link} is a symlink; bundles carry regular files only"
    _assert_nothing_written(spec, out)


def test_rejects_existing_output_and_leaves_it_untouched(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                                         make_spec: Callable[..., Path]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    before = tree(out)
    code, result = _build(make_spec(), out, make_key("release"))
    assert code == 2
    message = assert_error(result, code=2, kind="usage", subject=str(out))
    assert message == f"output {out} already exists; refusing to overwrite it"
    assert tree(out) == before


@pytest.mark.parametrize(("text", "size"), [("64MiB", 64 * 1024**2), ("4GB", 4 * 1000**3), ("512", 512),
                                            ("4KiB", 4096), ("2kb", 2000)])
def test_chunk_size_parsing(tmp_path: Path, make_key: Callable[[str], KeyPair], make_spec: Callable[..., Path],
                            text: str, size: int) -> None:
    out = tmp_path / "out"
    spec = make_spec(files={"w.bin": b"w"})  # small: a 512-byte chunk size means one fsync per chunk
    code, result = run_json("build", spec, "--out", out, "--key", make_key("release").private, "--chunk-size", text)
    assert code == 0, result
    assert json.loads((out / "manifest.json").read_bytes())["chunk_size"] == size


@pytest.mark.parametrize("text", ["junk", "64Mi", "1.5GB", "-1", "", "511", "17GiB", "64 MiB extra"])
def test_rejects_bad_chunk_size(tmp_path: Path, make_key: Callable[[str], KeyPair], make_spec: Callable[..., Path],
                                text: str) -> None:
    out = tmp_path / "out"
    code, result = run_json("build", make_spec(), "--out", out, "--key", make_key("release").private,
                            "--chunk-size", text)
    assert code == 2
    message = assert_error(result, code=2, kind="usage", subject=text)
    assert text in message and ("not a number" in message or "outside 512 bytes..16 GiB" in message)
    assert not out.exists()


def test_same_inputs_and_source_date_epoch_build_identical_bundles(
        tmp_path: Path, make_key: Callable[[str], KeyPair], make_spec: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = make_key("release")
    spec = make_spec(files={"w.bin": noise(5000, seed=1), "a/b.txt": b"b\n"})
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert _build(spec, tmp_path / "one", key)[0] == 0
    assert _build(spec, tmp_path / "two", key)[0] == 0
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    assert json.loads((tmp_path / "one" / "manifest.json").read_bytes())["created"] == "2023-11-14T22:13:20Z"

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000001")
    assert _build(spec, tmp_path / "three", key)[0] == 0
    assert tree(tmp_path / "three")["manifest.json"] != tree(tmp_path / "one")["manifest.json"]


LONG = "deep/" + "d" * 90 + "/" + "f" * 80 + ".bin"  # over ustar's 100-byte name field
NON_ASCII = "modèle/naïve-é-ß-日本.bin"


def test_non_ascii_and_long_paths_round_trip(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                             make_trust: Callable[..., Path], make_spec: Callable[..., Path]) -> None:
    key = make_key("release")
    files = {LONG: noise(3000, seed=1), NON_ASCII: noise(700, seed=2)}
    out = tmp_path / "out"
    assert _build(make_spec(files=files), out, key)[0] == 0
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert {f["path"] for c in manifest["components"] for f in c["files"]} >= {f"models/tiny/{p}" for p in files}

    prefix = tmp_path / "prefix"
    code, result = run_json("install", out, "--trust", make_trust(key), "--prefix", prefix)
    assert code == 0, result
    for rel, data in files.items():
        assert (prefix / "demo" / "current" / "models" / "tiny" / rel).read_bytes() == data


def test_build_reports_what_it_wrote(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                     make_spec: Callable[..., Path]) -> None:
    key = make_key("release")
    out = tmp_path / "out"
    result = run("build", make_spec(), "--out", out, "--key", key.private, "--chunk-size", "1KiB")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"built demo 1.0.0 at {out}: 4 files, ")
    assert f"signed by {key.keyid[:16]}" in result.stdout


@pytest.mark.parametrize("epoch", ["yesterday", "1.5", "-1", "99999999999999"])
def test_rejects_malformed_source_date_epoch(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                             make_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                             epoch: str) -> None:
    """reproducible-builds.org: a malformed SOURCE_DATE_EPOCH should fail the build, not be ignored."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    spec, out = make_spec(), tmp_path / "out"
    code, result = _build(spec, out, make_key("release"))
    assert code == 2
    message = assert_error(result, code=2, kind="usage", subject="SOURCE_DATE_EPOCH")
    assert f"SOURCE_DATE_EPOCH {epoch!r}" in message
    _assert_nothing_written(spec, out)


def test_single_file_source_and_two_models(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                           make_trust: Callable[..., Path]) -> None:
    """A [[model]] source may be one file (it lands at models/<name>/<file name>); models keep spec order."""
    key = make_key("release")
    base = tmp_path / "src"
    (base / "two").mkdir(parents=True)
    (base / "one.safetensors").write_bytes(noise(3000, seed=1))
    (base / "two" / "a.txt").write_bytes(b"a\n")
    policy = POLICY + b'\n[models.two]\nsites = ["test-site"]\n'
    (base / "policy.toml").write_bytes(policy.replace(b"[models.tiny]", b"[models.one]"))
    (base / "spec.toml").write_text('[bundle]\nname = "multi"\nversion = "2.0.0"\n'
                                    '[[model]]\nname = "one"\nsource = "one.safetensors"\n'
                                    '[[model]]\nname = "two"\nsource = "two"\n'
                                    '[safeguards]\nsource = "policy.toml"\n')
    out, prefix = tmp_path / "out", tmp_path / "prefix"
    assert _build(base / "spec.toml", out, key)[0] == 0
    code, result = run_json("install", out, "--trust", make_trust(key), "--prefix", prefix)
    assert code == 0, result
    installed = prefix / "multi" / "current"
    assert (installed / "models" / "one" / "one.safetensors").read_bytes() == noise(3000, seed=1)
    assert (installed / "models" / "two" / "a.txt").read_bytes() == b"a\n"
    components = json.loads((out / "manifest.json").read_bytes())["components"]
    assert [(c["kind"], c["name"]) for c in components] == [("model", "one"), ("model", "two"),
                                                            ("safeguards", "safeguards"), ("sbom", "sbom")]
