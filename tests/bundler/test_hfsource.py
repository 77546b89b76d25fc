"""Models read from a Hugging Face cache laid out as huggingface_hub lays it out (bundler/hfsource.py):
revisions resolved to commits, the selection, the manifest's origin and left_out, and every bad input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from gapship.installer.formats.manifest import Manifest
from gapship_testing import KeyPair, run, run_json
from hf_testing import add_snapshot, commit_of, small_model, write_hf_spec

pytest.importorskip("huggingface_hub")

V1 = commit_of("v1")
SELECT = 'include = ["*.json", "*.safetensors"]'


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    hub = tmp_path / "work" / "hub"
    add_snapshot(hub, "org/tiny", small_model(1), commit=V1, refs=("main", "v1.0"))
    return hub


def _build(spec: Path, key: KeyPair, out: Path, *extra: str) -> tuple[int, dict[str, object]]:
    return run_json("build", spec, "--out", out, "--key", key.private, *extra)


def _manifest(bundle: Path) -> Manifest:
    return Manifest.from_bytes((bundle / "manifest.json").read_bytes())


@pytest.mark.parametrize("revision", ["main", "v1.0", V1])
def test_revision_is_resolved_to_its_commit_and_recorded(tmp_path: Path, cache: Path, make_key, revision: str) -> None:
    spec = write_hf_spec(cache.parent, {"tiny": f'hf_repo = "org/tiny"\nrevision = "{revision}"\ncache_dir = "hub"\n{SELECT}'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 0, out
    model = _manifest(tmp_path / "b").components[0]
    assert model.origin is not None and (model.origin.hf_repo, model.origin.revision) == ("org/tiny", V1)
    assert out["models"] == [{"name": "tiny", "files": 6, "bytes": model.size, "card": None,
                              "origin": {"hf_repo": "org/tiny", "revision": V1},
                              "left_out": model.left_out.to_dict() if model.left_out else None}]


def test_files_are_bundled_as_regular_files_with_the_blob_bytes(tmp_path: Path, cache: Path, make_key) -> None:
    spec = write_hf_spec(cache.parent, {"tiny": f'hf_repo = "org/tiny"\ncache_dir = "hub"\n{SELECT}'})
    assert _build(spec, make_key("release"), tmp_path / "b")[0] == 0
    files = {f.path: f for f in _manifest(tmp_path / "b").files()}
    model = small_model(1)
    kept = sorted(p for p in model if p.endswith((".json", ".safetensors")))
    assert sorted(p for p in files if p.startswith("models/")) == [f"models/tiny/{p}" for p in kept]
    for rel in kept:
        f = files[f"models/tiny/{rel}"]
        assert (f.hash, f.size, f.mode) == (hashlib.sha256(model[rel]).hexdigest(), len(model[rel]), 0o644)


def test_left_out_counts_what_the_selection_dropped(tmp_path: Path, cache: Path, make_key) -> None:
    spec = write_hf_spec(cache.parent, {"tiny": f'hf_repo = "org/tiny"\ncache_dir = "hub"\n{SELECT}\nexclude = ["*index*"]'})
    assert _build(spec, make_key("release"), tmp_path / "b")[0] == 0
    model = _manifest(tmp_path / "b").components[0]
    dropped = {p: d for p, d in small_model(1).items()
               if not p.endswith((".json", ".safetensors")) or "index" in p}
    assert model.left_out is not None
    assert model.left_out.to_dict() == {"files": len(dropped), "bytes": sum(map(len, dropped.values()))}
    text = run("inspect", tmp_path / "b").stdout
    assert f"left out by its selection: {len(dropped)} files" in text and f"from org/tiny at {V1}" in text


def test_cache_is_found_through_hf_hub_cache(tmp_path: Path, cache: Path, make_key,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    spec = write_hf_spec(tmp_path / "elsewhere", {"tiny": 'hf_repo = "org/tiny"'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 0, out
    assert _manifest(tmp_path / "b").components[0].left_out is None  # no selection: nothing left out


def test_card_is_recorded_in_the_manifest(tmp_path: Path, cache: Path, make_key) -> None:
    spec = write_hf_spec(cache.parent, {"tiny": 'hf_repo = "org/tiny"\ncache_dir = "hub"\n\n[model.card]\n'
                                                'license = "apache-2.0"\narchitecture = "BertModel"'})
    assert _build(spec, make_key("release"), tmp_path / "b")[0] == 0
    m = _manifest(tmp_path / "b")
    assert m.format_version == 2
    assert m.components[0].card is not None and m.components[0].card.to_dict() == {
        "license": "apache-2.0", "architecture": "BertModel"}


def test_directory_source_with_hf_repo_records_the_repo_without_a_revision(tmp_path: Path, make_key) -> None:
    folder = tmp_path / "work"
    (folder / "m").mkdir(parents=True)
    (folder / "m" / "config.json").write_text("{}")
    spec = write_hf_spec(folder, {"tiny": 'source = "m"\nhf_repo = "org/tiny"'})
    assert _build(spec, make_key("release"), tmp_path / "b")[0] == 0
    origin = _manifest(tmp_path / "b").components[0].origin
    assert origin is not None and origin.to_dict() == {"hf_repo": "org/tiny"}


def test_directory_source_selection_over_nested_and_hidden_files(tmp_path: Path, make_key) -> None:
    folder = tmp_path / "work"
    for rel, data in small_model(2).items():
        (folder / "m" / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / "m" / rel).write_bytes(data)
    spec = write_hf_spec(folder, {"tiny": 'source = "m"\nexclude = ["onnx/", ".*", "*.bin"]'})
    assert _build(spec, make_key("release"), tmp_path / "b")[0] == 0
    paths = sorted(f.path for f in _manifest(tmp_path / "b").components[0].files)
    assert paths == sorted(f"models/tiny/{p}" for p in small_model(2)
                           if not p.startswith(("onnx/", ".")) and not p.endswith(".bin"))


def test_rejects_revision_not_in_the_cache(tmp_path: Path, cache: Path, make_key) -> None:
    spec = write_hf_spec(cache.parent, {"tiny": 'hf_repo = "org/tiny"\nrevision = "v2.0"\ncache_dir = "hub"'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 2 and not (tmp_path / "b").exists()
    assert out["error"]["message"] == (f"model 'tiny': revision 'v2.0' of org/tiny is not in the Hugging Face cache "
                                       f"{cache}; run gapship build --download to fetch it")


def test_rejects_repo_not_in_the_cache(tmp_path: Path, cache: Path, make_key) -> None:
    spec = write_hf_spec(cache.parent, {"tiny": 'hf_repo = "org/other"\ncache_dir = "hub"'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 2 and "revision 'main' of org/other is not in the Hugging Face cache" in out["error"]["message"]


def test_rejects_missing_cache(tmp_path: Path, make_key) -> None:
    spec = write_hf_spec(tmp_path / "work", {"tiny": 'hf_repo = "org/tiny"\ncache_dir = "nowhere"'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 2 and "--download" in out["error"]["message"]


@pytest.mark.parametrize("where", ["outside", "other-repo", "relative"])
def test_rejects_snapshot_link_that_escapes_its_blobs(tmp_path: Path, cache: Path, make_key, where: str) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "x"}')
    other = add_snapshot(cache, "org/other", {"config.json": b"{}"}, commit=commit_of("other"))
    targets = {"outside": secret, "other-repo": (other / "config.json").resolve(),
               "relative": Path("../../blobs/../../../../secret.json")}
    link = cache / "models--org--tiny" / "snapshots" / V1 / "extra.json"
    os.symlink(targets[where], link)
    spec = write_hf_spec(cache.parent, {"tiny": 'hf_repo = "org/tiny"\ncache_dir = "hub"'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 2 and not (tmp_path / "b").exists()
    message = out["error"]["message"]
    assert f"{link} is a symlink to" in message and "leaves its repo's blobs/" in message
    assert "\n" not in message


def test_rejects_directory_symlink_in_a_snapshot(tmp_path: Path, cache: Path, make_key) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x.json").write_text("{}")
    os.symlink(tmp_path / "dir", cache / "models--org--tiny" / "snapshots" / V1 / "sub")
    spec = write_hf_spec(cache.parent, {"tiny": 'hf_repo = "org/tiny"\ncache_dir = "hub"'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 2 and "sub is a symlink to" in out["error"]["message"]


def test_rejects_selection_that_matches_nothing(tmp_path: Path, cache: Path, make_key) -> None:
    spec = write_hf_spec(cache.parent, {"tiny": 'hf_repo = "org/tiny"\ncache_dir = "hub"\ninclude = ["*.gguf"]'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 2
    assert out["error"]["message"] == "model 'tiny': include ['*.gguf'] select none of the 10 file(s) of org/tiny"


def test_rejects_directory_selection_that_matches_nothing(tmp_path: Path, make_key) -> None:
    folder = tmp_path / "work"
    (folder / "m").mkdir(parents=True)
    (folder / "m" / "config.json").write_text("{}")
    spec = write_hf_spec(folder, {"tiny": 'source = "m"\nexclude = ["*"]'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 2 and "exclude ['*'] select none of the 1 file(s)" in out["error"]["message"]


def test_rejects_two_models_publishing_the_same_repo_id(tmp_path: Path, cache: Path, make_key) -> None:
    spec = write_hf_spec(cache.parent, {"a": 'hf_repo = "org/tiny"\ncache_dir = "hub"',
                                        "b": 'hf_repo = "org/tiny"\ncache_dir = "hub"\nrevision = "v1.0"'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 2 and "publish the same hf_repo 'org/tiny'" in out["error"]["message"]


def test_directory_source_still_refuses_symlinks(tmp_path: Path, cache: Path, make_key) -> None:
    """Links are followed for a Hugging Face source only: a snapshot given as a plain source is refused."""
    spec = write_hf_spec(cache.parent, {"tiny": f'source = "hub/models--org--tiny/snapshots/{V1}"'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 2 and "is a symlink; bundles carry regular files only" in out["error"]["message"]


def test_damaged_cache_with_a_dangling_link_is_refused(tmp_path: Path, cache: Path, make_key) -> None:
    os.symlink("../../blobs/" + "0" * 64, cache / "models--org--tiny" / "snapshots" / V1 / "gone.safetensors")
    spec = write_hf_spec(cache.parent, {"tiny": 'hf_repo = "org/tiny"\ncache_dir = "hub"'})
    code, out = _build(spec, make_key("release"), tmp_path / "b")
    assert code == 2 and "damaged" in out["error"]["message"] and "\n" not in out["error"]["message"]
    assert json.dumps(out)
