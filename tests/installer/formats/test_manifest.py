"""The manifest model (installer/formats/manifest.py): bytes round trip, canonical form, and a representative
structural rule per field (the exhaustive hostile versions live in tests/security/). ``Manifest.to_bytes``
writes the canonical JSON a piece at a time; the bytes must be exactly ``canonical_json(to_dict())``,
what every verifier recomputes and compares (docs/format.md, 4.1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from gapship.bundler.build import build
from gapship.bundler.deps.freeze import FrozenDependencies, Target
from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.spec import load_spec
from gapship.installer.errors import UnsafeContentError
from gapship.installer.formats import manifest as manifest_module
from gapship.installer.formats.manifest import MAX_MANIFEST_BYTES, Manifest
from gapship.installer.kit import canonical_json
from gapship_testing import noise, write_spec


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The manifest bytes of a real two-file bundle, one with a non-ASCII name (built once)."""
    base = tmp_path_factory.mktemp("manifest")
    spec = write_spec(base / "src", {"w.bin": noise(3000, seed=1), "é.txt": b"e\n"})
    key = SigningKey.load(keygen("release", base / "keys")[0])
    build(load_spec(spec), out=base / "bundle", key=key, chunk_size=1024)
    return (base / "bundle" / "manifest.json").read_bytes()


def _refused(raw: Any, *, subject: str, words: str) -> None:
    body = raw if isinstance(raw, bytes) else canonical_json(raw)
    with pytest.raises(UnsafeContentError) as caught:
        Manifest.from_bytes(body)
    assert caught.value.subject == subject, caught.value.message
    assert words in caught.value.message
    assert "\n" not in caught.value.message


def test_round_trip_bytes(data: bytes) -> None:
    m = Manifest.from_bytes(data)
    assert m.to_bytes() == data
    assert Manifest.from_dict(m.to_dict()) == m
    assert (m.name, m.version, m.hash_algorithm, m.chunk_size) == ("demo", "1.0.0", "sha256", 1024)
    assert [f.path for f in m.files()] == ["models/tiny/w.bin", "models/tiny/é.txt", "safeguards/policy.toml",
                                           "sbom/bom.cdx.json"]
    assert m.file_count == 4
    assert m.chunk("00001.bin") == m.chunks[1] and m.chunk("99999.bin") is None
    assert "é".encode() in data  # UTF-8 as is, not \\u escapes (RFC 8785)


@pytest.mark.parametrize("variant", ["indented", "spaced", "reordered", "trailing_newline", "ascii_escaped",
                                     "duplicate_key"])
def test_rejects_non_canonical_form(data: bytes, variant: str) -> None:
    raw = json.loads(data)
    body = {
        "indented": json.dumps(raw, sort_keys=True, indent=1, ensure_ascii=False).encode(),
        "spaced": json.dumps(raw, sort_keys=True, ensure_ascii=False).encode(),
        "reordered": json.dumps(dict(reversed(list(raw.items()))), separators=(",", ":"),
                                ensure_ascii=False).encode(),
        "trailing_newline": data + b"\n",
        "ascii_escaped": json.dumps(raw, sort_keys=True, separators=(",", ":")).encode(),
        "duplicate_key": data.replace(b'{"bundle":', b'{"bundle":{"name":"x","version":"9"},"bundle":', 1),
    }[variant]
    assert body != data
    _refused(body, subject="manifest.json", words="not in canonical form")


@pytest.mark.parametrize(("body", "words"), [
    (b"\xff\xfe", "not valid JSON"),
    (b'{"format":', "not valid JSON"),
    (b"[]", "must be an object"),
])
def test_rejects_what_is_not_a_json_object(body: bytes, words: str) -> None:
    with pytest.raises(UnsafeContentError) as caught:
        Manifest.from_bytes(body)
    assert words in caught.value.message


def test_rejects_float(data: bytes) -> None:
    _refused(data.replace(b'"chunk_size":1024', b'"chunk_size":1024.0'), subject="manifest.json",
             words="non-integer number '1024.0'")


def test_rejects_oversized_manifest_before_parsing() -> None:
    _refused(b" " * (MAX_MANIFEST_BYTES + 1), subject="manifest.json", words="over the")


def _edit(data: bytes, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(data)
    change(raw)
    return raw


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A change that sets raw[a][b]... for a dotted path (list indices as numbers)."""
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = raw
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return change


_DELETE = object()

RULES = [
    # (where, new value, subject named, words)
    ("format", "zip", "format", "is not 'gapship-bundle'"),
    ("format_version", 3, "format_version", "format v3: upgrade gapship"),
    ("created", _DELETE, "manifest", "lacks created"),
    ("surprise", 1, "manifest", "has unknown 'surprise'"),
    ("bundle.name", "Demo", "bundle name", "'Demo' must match"),
    ("bundle.version", "v1.0.0", "version", "not in normalised PEP 440 form"),
    ("bundle.version", "one", "version", "not a PEP 440 version"),
    ("created", "2024-01-01 00:00:00", "created", "is not YYYY-MM-DDTHH:MM:SSZ"),
    ("expires", "tomorrow", "expires", "is not YYYY-MM-DDTHH:MM:SSZ"),
    ("hash_algorithm", "md5", "hash_algorithm", "'md5' is not one of"),
    ("chunk_size", 100, "chunk_size", "outside 512.."),
    ("chunk_size", True, "chunk_size", "must be an integer"),
    ("chunk_size", -1, "chunk_size", "must be an integer"),
    ("chunk_size", 2**53, "chunk_size", "must be an integer"),
    ("chunks", [], "chunks", "lists no chunks"),
    ("chunks.1.name", "00002.bin", "00002.bin", "chunk 1 is named '00002.bin', expected '00001.bin'"),
    ("chunks.0.size", 1000, "00000.bin", "every chunk but the last must be exactly chunk_size"),
    ("chunks.0.hash", "AB" * 32, "chunk 00000.bin", "not a lower-case hex sha256 digest"),
    ("payload_size", 512, "payload_size", "not payload_size 512"),
    ("components.0.kind", "plugin", "component plugin/tiny", "kind 'plugin' must be one of"),
    ("components.0.files.0.path", "models/tiny/../w.bin", "models/tiny/../w.bin", "'..' component"),
    ("components.0.files.0.path", "safeguards/w.bin", "safeguards/w.bin", "is not under models/tiny/"),
    ("components.0.files.0.mode", 0o4755, "models/tiny/w.bin", "only 644 and 755"),
    ("components.0.files.0.hash", "0" * 63, "file 'models/tiny/w.bin'", "not a lower-case hex sha256 digest"),
    ("components.0.files.0.offset", 100, "models/tiny/w.bin", "has offset 100"),
    ("components.0.files.0.size", "3000", "components[0].files[0].size", "must be an integer"),
    # every field of a file entry, and its keys (parsed on a fast path: a manifest lists every file)
    ("components.0.files.0.path", 5, "components[0].files[0].path",
     "manifest field components[0].files[0].path must be a string"),
    ("components.0.files.0.hash", None, "components[0].files[0].hash",
     "manifest field components[0].files[0].hash must be a string"),
    ("components.0.files.0.mode", True, "components[0].files[0].mode",
     "manifest field components[0].files[0].mode must be an integer in 0..2^53-1"),
    ("components.0.files.0.offset", -1, "components[0].files[0].offset",
     "manifest field components[0].files[0].offset must be an integer in 0..2^53-1"),
    ("components.0.files.1.hash", _DELETE, "components[0].files[1]", "manifest field components[0].files[1] lacks hash"),
    ("components.0.files.1.owner", "root", "components[0].files[1]",
     "manifest field components[0].files[1] has unknown 'owner'"),
]


@pytest.mark.parametrize(("where", "value", "subject", "words"), RULES,
                         ids=[f"{r[0]}={r[1] if r[1] is not _DELETE else 'deleted'}" for r in RULES])
def test_rejects_structural_violation(data: bytes, where: str, value: object, subject: str, words: str) -> None:
    _refused(_edit(data, _set(where, value)), subject=subject, words=words)


def test_rejects_component_listed_twice(data: bytes) -> None:
    raw = _edit(data, lambda r: r["components"].insert(1, r["components"][0]))
    _refused(raw, subject="component model/tiny", words="is listed twice")


def test_rejects_paths_that_collide_after_case_folding(data: bytes) -> None:
    def change(raw: dict[str, Any]) -> None:
        files = raw["components"][0]["files"]
        files[1]["path"] = files[0]["path"].upper().replace("MODELS/TINY/", "models/tiny/")
    _refused(_edit(data, change), subject="models/tiny/W.BIN", words="collides with 'models/tiny/w.bin'")


def test_rejects_manifest_without_the_safeguards_policy(data: bytes) -> None:
    """The vendor's policy travels with every bundle: a manifest whose safeguards component holds
    another file instead of safeguards/policy.toml is refused (docs/format.md, "Components")."""
    def change(raw: dict[str, Any]) -> None:
        [safeguards] = [c for c in raw["components"] if c["kind"] == "safeguards"]
        safeguards["files"][0]["path"] = "safeguards/other.toml"
    _refused(_edit(data, change), subject="components", words="exactly one safeguards component")


def test_build_refuses_more_chunks_than_a_bundle_may_hold(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Chunk names are five digits (00000..99999): past MAX_CHUNKS the build asks for larger chunks
    rather than writing names a shell glob would sort out of order."""
    from gapship.bundler import payload as _payload
    from gapship.installer.errors import UsageError

    monkeypatch.setattr(_payload, "MAX_CHUNKS", 3)
    spec = write_spec(tmp_path / "src", {"w.bin": noise(8000, seed=3)})
    key = SigningKey.load(keygen("release", tmp_path / "keys")[0])
    with pytest.raises(UsageError, match="more than 3 chunks of 1024 bytes; give a larger --chunk-size"):
        build(load_spec(spec), out=tmp_path / "bundle", key=key, chunk_size=1024)
    assert not (tmp_path / "bundle").exists()


# -- to_bytes writes exactly canonical_json(to_dict()) ---------------------------------------------


# Names that JSON escapes or writes as multi-byte UTF-8, and (below) an empty dependencies component,
# whose "files" list is empty.
FILES = {'quo"te\'s.bin': b"q", "back`tick$.txt": b"b", "modèle/naïve-日本/𝄞.bin": b"m", "empty": b""}
FILES |= {f"many/{i:04d}": bytes([i % 256]) for i in range(3)}


def _manifest(tmp_path: Path, files: dict[str, bytes], *, expires: str | None) -> tuple[Manifest, bytes]:
    spec = write_spec(tmp_path / "src", files)
    deps = FrozenDependencies(files=(), target=Target("3.11", "cp", ("linux_x86_64",)), pins=(), bootstrap=())
    out = tmp_path / "bundle"
    build(load_spec(spec), out=out, key=SigningKey.generate(), chunk_size=4096, expires=expires, dependencies=deps,
          now=datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    data = (out / "manifest.json").read_bytes()
    return Manifest.from_bytes(data), data


@pytest.mark.parametrize("expires", [None, "90d"])
@pytest.mark.parametrize("batch", [1, 2, 1000])
def test_manifest_bytes_are_to_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expires: str | None,
                                     batch: int) -> None:
    """Batches of one file, of two (the model's 7 files end in a short batch), and one batch for all."""
    monkeypatch.setattr(manifest_module, "_BATCH", batch)
    manifest, written = _manifest(tmp_path, FILES, expires=expires)
    assert [c.kind for c in manifest.components] == ["model", "safeguards", "dependencies", "sbom"]
    assert manifest.components[-2].files == ()
    assert (manifest.expires is None) == (expires is None)
    assert manifest.to_bytes() == canonical_json(manifest.to_dict()) == written


# -- the chunk and file lists as column tables --------------------------------------------------------


def test_tables_hand_out_the_entries_they_hold(data: bytes) -> None:
    """ChunkTable and FileTable are sequences of the same Chunk and FileEntry values from_dict reads,
    equal to the tuples a caller would build, by index, slice and iteration."""
    m = Manifest.from_bytes(data)
    raw = json.loads(data)
    chunks = tuple(manifest_module.Chunk(c["name"], c["size"], c["hash"]) for c in raw["chunks"])
    assert isinstance(m.chunks, manifest_module.ChunkTable)
    assert m.chunks == chunks and tuple(m.chunks) == chunks and m.chunks[-1] == chunks[-1]
    assert m.chunks[1:] == chunks[1:]
    files = m.components[0].files
    assert isinstance(files, manifest_module.FileTable)
    assert [f.path for f in files] == ["models/tiny/w.bin", "models/tiny/é.txt"]
    assert files[0] == manifest_module.FileEntry(**raw["components"][0]["files"][0])
    assert m.components[0].size == sum(f["size"] for f in raw["components"][0]["files"])
    with pytest.raises(IndexError):
        files[2]


def test_tables_keep_a_value_they_cannot_hold_exactly_as_written(data: bytes) -> None:
    """A hash that is not lower-case hex of the table's width, or a chunk name other than its index's,
    is kept as written: the checks see it and refuse it in their own words."""
    table = manifest_module.ChunkTable()
    for name, hash in (("00000.bin", "ab" * 32), ("x.bin", "AB" * 32), ("00002.bin", "abc"), ("00003.bin", "")):
        table.append(name, 512, hash)
    assert [(c.name, c.hash) for c in table] == [("00000.bin", "ab" * 32), ("x.bin", "AB" * 32), ("00002.bin", "abc"),
                                                  ("00003.bin", "")]
    late = manifest_module.ChunkTable()
    late.append("00000.bin", 512, "zz")  # the width comes from the first well-formed hash, wherever it is
    late.append("00001.bin", 512, "cd" * 32)
    assert [c.hash for c in late] == ["zz", "cd" * 32]


def test_streamed_parse_refuses_in_from_dicts_order(data: bytes) -> None:
    """Two faults: the one from_dict met first is reported (a top-level key before a chunk entry,
    chunk entries before components), whatever their order in the bytes."""
    raw = json.loads(data)
    raw["chunks"][1]["size"] = "big"
    raw["zzz"] = 1
    _refused(raw, subject="manifest", words="unknown 'zzz'")
    del raw["zzz"]
    raw["components"][0]["files"][0]["mode"] = "rw"
    _refused(raw, subject="chunks[1].size", words="chunks[1].size must be an integer")


def test_rejects_more_components_than_the_cap(data: bytes) -> None:
    """At most MAX_COMPONENTS (4096; it was the file cap, 200,000: docs/format.md, "Limits")."""
    raw = json.loads(data)
    empty = {"files": [], "kind": "model", "name": "m"}
    raw["components"] = raw["components"] + [empty] * (manifest_module.MAX_COMPONENTS - 1)
    _refused(raw, subject="manifest.json", words=f"{manifest_module.MAX_COMPONENTS} components")  # counted first
    raw["components"] = [{**c, "files": None} for c in raw["components"]]  # no more lists than the cap allows
    _refused(raw, subject="components", words=f"over the cap of {manifest_module.MAX_COMPONENTS}")


def test_spec_with_more_models_than_components_allow_is_refused(tmp_path: Path) -> None:
    from gapship.bundler.spec import MAX_MODELS
    from gapship.installer.errors import UsageError

    spec = write_spec(tmp_path, {"w.bin": b"w"})
    text = spec.read_text()
    models = "".join(f'[[model]]\nname = "m{i}"\nsource = "model"\n\n' for i in range(MAX_MODELS))
    spec.write_text(text.replace("[safeguards]", models + "[safeguards]"))
    with pytest.raises(UsageError, match=f"over the cap of {MAX_MODELS}"):
        load_spec(spec)
