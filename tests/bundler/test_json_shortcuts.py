"""The build writes the SBOM's file list and the provenance's inputs without json.dumps per entry
(bundler/sbom.py, bundler/provenance.py): the bytes must be those json.dumps / canonical_json write."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gapship.bundler.provenance import _entry_json
from gapship.bundler.sbom import json_string
from gapship.installer.kit import canonical_json

TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)  # no lone surrogates: UTF-8 only


@given(TEXT)
def test_string_is_what_json_dumps_writes(text: str) -> None:
    assert json_string(text) == json.dumps(text, ensure_ascii=False)


@given(name=TEXT, alg=st.sampled_from(["sha256", "sha384", "sha512", 'od"d\\']), value=TEXT)
def test_provenance_entry_is_its_canonical_json(name: str, alg: str, value: str) -> None:
    entry: dict[str, object] = {"name": name, "digest": {alg: value}}
    assert _entry_json(entry) == canonical_json(entry)


def test_provenance_entries_with_more_take_canonical_json() -> None:
    for entry in ({"name": "a", "digest": {"sha256": "00"}, "uri": "pkg:pypi/x@1"},
                  {"name": "a", "digest": {"sha256": "00", "sha512": "11"}},
                  {"name": "a", "digest": {"sha256": "00"}, "annotations": {"source": "base"}}):
        assert _entry_json(entry) == canonical_json(entry)
