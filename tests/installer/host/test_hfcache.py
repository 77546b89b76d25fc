"""The publishing plan of installer/host/hfcache.py: which repo id and snapshot each installed model
gets, and the refusal of a manifest whose models would share a repo id (a bundle not built by gapship
build, which refuses that spec)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from gapship.installer.errors import HostError
from gapship.installer.formats.manifest import Component, FileEntry, Manifest, Origin
from gapship.installer.host.hfcache import entries_of, repo_folder

H = "0" * 64
COMMIT = "a" * 40


def _manifest(*models: Component, name: str = "demo") -> Manifest:
    """What entries_of reads of a manifest (its name and components), without a payload to lay out:
    a real Manifest would check every offset, which this plan does not depend on."""
    return cast(Manifest, SimpleNamespace(name=name, components=models))


def _model(name: str, origin: Origin | None = None) -> Component:
    files = (FileEntry(f"models/{name}/config.json", 2, 0o644, H, 0), FileEntry(f"models/{name}/sub/w.bin", 2, 0o644, H, 512))
    return Component("model", name, files, origin=origin)


def test_model_with_origin_is_published_under_its_repo_and_commit() -> None:
    (entry,) = entries_of(_manifest(_model("tiny", Origin("org/tiny", COMMIT))), manifest_bytes=b"m",
                          installed=lambda _: True)
    assert (entry.repo, entry.commit, entry.files) == ("org/tiny", COMMIT, ("config.json", "sub/w.bin"))
    assert entry.folder == repo_folder("org/tiny") == "models--org--tiny"


def test_model_without_origin_gets_bundle_slash_model_and_a_commit_per_manifest() -> None:
    manifest = _manifest(_model("plain"), _model("repo-only", Origin("org/x")))
    first = entries_of(manifest, manifest_bytes=b"v1", installed=lambda _: True)
    again = entries_of(manifest, manifest_bytes=b"v1", installed=lambda _: True)
    other = entries_of(manifest, manifest_bytes=b"v2", installed=lambda _: True)
    assert [e.repo for e in first] == ["demo/plain", "org/x"]
    assert first == again and all(len(e.commit) == 40 and int(e.commit, 16) >= 0 for e in first)
    assert [e.commit for e in first] != [e.commit for e in other]


def test_models_the_site_left_out_are_not_published() -> None:
    manifest = _manifest(_model("a", Origin("org/a")), _model("b", Origin("org/b")))
    assert [e.model for e in entries_of(manifest, manifest_bytes=b"m", installed=lambda m: m == "b")] == ["b"]


@pytest.mark.parametrize("second", ["org/same", "ORG/Same"])
def test_rejects_two_models_publishing_the_same_repo_id(second: str) -> None:
    manifest = _manifest(_model("a", Origin("org/same")), _model("b", Origin(second)))
    with pytest.raises(HostError, match="models 'a' and 'b' would both publish"):
        entries_of(manifest, manifest_bytes=b"m", installed=lambda _: True)
