"""Manifest format v2 (docs/format.md, section 11): a delta's base and its files taken from it, a
model's origin, card and left-out counts, the sbom component. A v2 reader reads v1 as before; v2
members in a manifest that says v1 are refused, as a v1 reader refuses them (unknown keys); and a
writer says v2 only when it uses something of v2, so that older sites keep installing the rest."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from gapship.installer.errors import UnsafeContentError
from gapship.installer.formats.manifest import (
    BaseRef, Component, FileEntry, LeftOut, Manifest, ModelCard, Origin, needed_format_version,
)
from gapship.installer.kit import canonical_json

H = "ab" * 32  # a sha256 digest
BASE = BaseRef("demo", "1.0.0", "sha256:" + "cd" * 32)


def _manifest(*, base: BaseRef | None = BASE, version: int = 2, **model: Any) -> Manifest:
    """A delta: one model file in the payload, one taken from the base, and the policy."""
    files = [FileEntry("models/m/new.bin", 10, 0o644, H, 512),
             FileEntry("models/m/old.bin", 1 << 40, 0o644, H, 0, from_base=True)]
    policy = FileEntry("safeguards/policy.toml", 5, 0o644, H, 2048)
    size = 2048 + 512 + 1024 + 512  # policy's data block, then the end of the archive
    chunk_size = 512
    return Manifest(name="demo", version="1.1.0", created="2026-01-01T00:00:00Z", hash_algorithm="sha256",
                    chunk_size=chunk_size, payload_size=size,
                    chunks=[*[_chunk(i, chunk_size) for i in range(size // chunk_size)]],
                    components=(Component("model", "m", files, **model),
                                Component("safeguards", "safeguards", [policy])),
                    format_version=version, base=base)


def _chunk(i: int, size: int) -> Any:
    from gapship.installer.formats.manifest import Chunk, chunk_name
    return Chunk(chunk_name(i), size, H)


def test_delta_round_trips_through_canonical_bytes() -> None:
    m = _manifest(origin=Origin("org/name", "a" * 40), card=ModelCard(license="apache-2.0", task="text-generation"),
                  left_out=LeftOut(files=3, bytes=4096))
    data = m.to_bytes()
    assert data == canonical_json(m.to_dict())
    again = Manifest.from_bytes(data)
    assert again == m and again.to_bytes() == data
    assert [f.path for f in again.base_files()] == ["models/m/old.bin"]
    assert [f.path for f in again.payload_files()] == ["models/m/new.bin", "safeguards/policy.toml"]
    assert again.is_delta and again.base == BASE
    raw = json.loads(data)
    assert raw["components"][0]["files"][1] == {"hash": H, "mode": 420, "path": "models/m/old.bin",
                                                "size": 1 << 40, "source": "base"}
    assert raw["components"][0]["origin"] == {"hf_repo": "org/name", "revision": "a" * 40}


def test_writer_says_v1_when_nothing_of_v2_is_used() -> None:
    plain = Component("model", "m", [FileEntry("models/m/a", 1, 0o644, H, 512)])
    assert needed_format_version(base=None, components=[plain]) == 1
    assert needed_format_version(base=BASE, components=[plain]) == 2
    assert needed_format_version(base=None, components=[Component("model", "m", [], card=ModelCard(task="x"))]) == 2
    assert needed_format_version(base=None, components=[Component("sbom", "sbom", [])]) == 2


def _refused(change: Callable[[dict[str, Any]], None], words: str) -> None:
    raw = _manifest(origin=Origin("org/name")).to_dict()
    change(raw)
    with pytest.raises(UnsafeContentError) as caught:
        Manifest.from_bytes(canonical_json(raw))
    assert words in caught.value.message, caught.value.message
    assert "\n" not in caught.value.message


def _file(raw: dict[str, Any], i: int = 1) -> dict[str, Any]:
    entry: dict[str, Any] = raw["components"][0]["files"][i]
    return entry


@pytest.mark.parametrize(("name", "change", "words"), [
    ("v2_members_under_v1", lambda m: m.update(format_version=1), "needs format_version 2"),
    ("future_format", lambda m: m.update(format_version=3), "format v3: upgrade gapship"),
    ("base_file_without_base", lambda m: m.pop("base"), "names no base"),
    ("offset_and_source", lambda m: _file(m).update(offset=0), "has both offset and source"),
    ("neither_offset_nor_source", lambda m: _file(m).pop("source"), "lacks offset"),
    ("source_not_base", lambda m: _file(m).update(source="http://x"), "source must be 'base'"),
    ("policy_from_base", lambda m: (m["components"][1]["files"][0].pop("offset"),
                                    m["components"][1]["files"][0].update(source="base")), "must be in the payload"),
    ("base_digest_malformed", lambda m: m["base"].update(manifest_digest="md5:00"), "base.manifest_digest"),
    ("base_digest_short", lambda m: m["base"].update(manifest_digest="sha256:00"), "base.manifest_digest"),
    ("base_unknown_key", lambda m: m["base"].update(url="x"), "unknown"),
    ("base_bad_version", lambda m: m["base"].update(version="v1"), "PEP 440"),
    ("origin_escapes", lambda m: m["components"][0]["origin"].update(hf_repo="../x"), "repo id"),
    ("origin_revision_branch", lambda m: m["components"][0]["origin"].update(revision="main"), "40-hex"),
    ("card_unknown_key", lambda m: m["components"][0].update(card={"licence": "x"}), "unknown"),
    ("card_too_long", lambda m: m["components"][0].update(card={"description": "x" * 5000}), "over 4096"),
    ("origin_on_policy", lambda m: m["components"][1].update(origin={"hf_repo": "a/b"}), "only a model"),
    ("left_out_negative_type", lambda m: m["components"][0].update(left_out={"files": "1", "bytes": 0}),
     "must be an integer"),
    ("two_sboms", lambda m: m["components"].extend([{"kind": "sbom", "name": "sbom", "files": []}] * 2),
     "listed twice"),
    ("sbom_renamed", lambda m: m["components"].append({"kind": "sbom", "name": "other", "files": []}),
     "named 'sbom'"),
])
def test_rejects_malformed_v2(name: str, change: Callable[[dict[str, Any]], None], words: str) -> None:
    _refused(change, words)


def test_base_files_need_no_place_in_the_payload() -> None:
    """A file from the base is outside the payload's offset order: a terabyte of it changes nothing
    there, and the payload's own files are checked as before."""
    m = _manifest()
    assert sum(f.size for f in m.files()) > m.payload_size
    raw = m.to_dict()
    raw["components"][0]["files"][0]["offset"] = 1024  # now overlaps nothing but leaves a wrong header region
    raw["components"][1]["files"][0]["offset"] = 1024
    with pytest.raises(UnsafeContentError, match="overlaps the previous file"):
        Manifest.from_bytes(canonical_json(raw))
