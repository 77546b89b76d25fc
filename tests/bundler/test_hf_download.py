"""build --download (bundler/hfsource.py): huggingface_hub's snapshot_download against a hub on
127.0.0.1 (tests/support/hf_testing.py, FakeHub) fetches only what include/exclude select into the
cache, resolves the branch or tag to its commit, and a later build reads the same cache offline."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gapship.installer.formats.manifest import Manifest
from gapship_testing import KeyPair, gapship_script
from hf_testing import FakeHub, commit_of, small_model, write_hf_spec

pytest.importorskip("huggingface_hub")

V1 = commit_of("v1")


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub()
    server.add("org/tiny", small_model(1), commit=V1, refs=("main", "v1.0"))
    yield server
    server.close()


def _build(spec: Path, key: KeyPair, out: Path, hub: FakeHub, *extra: str) -> tuple[int, dict[str, object]]:
    """In a process of its own: huggingface_hub reads HF_ENDPOINT when it is imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(out.parent / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1")
    done = subprocess.run([str(gapship_script()), "build", str(spec), "--out", str(out), "--key", str(key.private),
                           "--json", *extra], env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, json.loads(done.stdout)


def test_download_fetches_only_the_selected_files_and_records_the_commit(tmp_path: Path, hub: FakeHub,
                                                                         make_key) -> None:
    key = make_key("release")
    spec = write_hf_spec(tmp_path / "work", {"tiny": 'hf_repo = "org/tiny"\nrevision = "v1.0"\ncache_dir = "hub"\n'
                                                     'include = ["*.json", "*.safetensors"]\nexclude = ["*index*"]'})
    code, out = _build(spec, key, tmp_path / "b1", hub, "--download")
    assert code == 0, out
    fetched = sorted(r.split("/resolve/")[1].split("/", 1)[1] for r in hub.requests if r.startswith("GET") and "/resolve/" in r)
    wanted = sorted(p for p in small_model(1) if p.endswith((".json", ".safetensors")) and "index" not in p)
    assert fetched == wanted
    model = Manifest.from_bytes((tmp_path / "b1" / "manifest.json").read_bytes()).components[0]
    assert model.origin is not None and model.origin.revision == V1
    assert sorted(f.path for f in model.files) == [f"models/tiny/{p}" for p in wanted]
    cache = tmp_path / "work" / "hub" / "models--org--tiny"
    assert (cache / "refs" / "v1.0").read_text() == V1

    hub.requests.clear()  # the same spec again, without --download: from the cache, no request
    code, out = _build(spec, key, tmp_path / "b2", hub)
    assert code == 0, out
    assert not [r for r in hub.requests if "/resolve/" in r or "/api/models" in r]
    again = Manifest.from_bytes((tmp_path / "b2" / "manifest.json").read_bytes()).components[0]
    assert again.origin == model.origin and [f.hash for f in again.files] == [f.hash for f in model.files]


def test_download_of_an_unknown_revision_is_one_line(tmp_path: Path, hub: FakeHub, make_key) -> None:
    spec = write_hf_spec(tmp_path / "work", {"tiny": 'hf_repo = "org/tiny"\nrevision = "v9"\ncache_dir = "hub"'})
    code, out = _build(spec, make_key("release"), tmp_path / "b", hub, "--download")
    assert code == 2, out
    message = out["error"]["message"]
    assert message.startswith("model 'tiny': cannot download org/tiny at 'v9': ") and "\n" not in message
    assert not (tmp_path / "b").exists()
