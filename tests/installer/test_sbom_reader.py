"""installer/sbom.py: the site's small SBOM reader (no CycloneDX library): what it takes from the
JSON, and what it refuses (exit 6)."""

from __future__ import annotations

import json

import pytest

from gapship.installer.errors import UnsafeContentError
from gapship.installer.sbom import packages


def _doc(*components: dict[str, object]) -> bytes:
    return json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": list(components)}).encode()


def test_packages_are_the_library_components_with_hash_and_license() -> None:
    data = _doc(
        {"type": "library", "name": "b", "version": "2", "purl": "pkg:pypi/b@2",
         "hashes": [{"alg": "SHA-384", "content": "ab"}], "licenses": [{"license": {"id": "MIT"}}]},
        {"type": "library", "name": "a", "version": "1", "purl": "pkg:pypi/a@1",
         "hashes": [{"alg": "MD5", "content": "x"}], "licenses": [{"expression": "MIT OR Apache-2.0"}]},
        {"type": "machine-learning-model", "name": "m"},
    )
    assert packages(data) == [
        {"name": "a", "version": "1", "purl": "pkg:pypi/a@1", "hash": None, "license": "MIT OR Apache-2.0"},
        {"name": "b", "version": "2", "purl": "pkg:pypi/b@2", "hash": "sha384:ab", "license": "MIT"},
    ]


def test_package_without_license_has_none() -> None:
    assert packages(_doc({"type": "library", "name": "a", "version": "1"}))[0]["license"] is None


@pytest.mark.parametrize("data", [b"not json", b"[]", json.dumps({"bomFormat": "SPDX"}).encode(),
                                  b"[" * 100_000])
def test_rejects_sbom_that_is_not_a_cyclonedx_document(data: bytes) -> None:
    with pytest.raises(UnsafeContentError) as caught:
        packages(data)
    assert caught.value.subject == "sbom/bom.cdx.json"
    assert caught.value.exit_code == 6
