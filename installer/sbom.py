"""Reading a bundle's SBOM, ``sbom/bom.cdx.json`` (docs/sbom.md), on the installer side.

Small on purpose: the trusted base does not import cyclonedx-python-lib. It takes the SBOM's bytes
out of the chunks, checked against their hash in the manifest (:func:`read_sbom`: a changed byte is
exit 3, like any file), and reads from the JSON only the package list that ``inspect --json`` and
``status --json`` show (:func:`packages`). A field it does not understand is left alone; a document
that is not a CycloneDX JSON object is refused (exit 6).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .bundle.files import CHUNKS
from .bundle.verify import read_small_files
from .errors import UnsafeContentError
from .formats.manifest import FileEntry, Manifest

SBOM_DIR = "sbom"
SBOM_PATH = "sbom/bom.cdx.json"
MAX_SBOM_BYTES = 64 * 1024 * 1024  # 200,000 files at about 300 bytes each
_ALGORITHMS = {"SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512"}


def sbom_entry(m: Manifest) -> FileEntry | None:
    return next((f for f in m.files() if f.path == SBOM_PATH), None)


def sbom_chunks_present(bundle: Path, m: Manifest) -> bool:
    """Whether every chunk file holding the SBOM's bytes is there (a folder with only the manifest and
    its signatures has none); whether they hold the right bytes is :func:`read_sbom`'s check."""
    entry = sbom_entry(m)
    if entry is None or entry.size == 0:
        return True
    first, last = entry.offset // m.chunk_size, (entry.end - 1) // m.chunk_size
    return all((bundle / CHUNKS / m.chunks[i].name).exists() for i in range(first, min(last, len(m.chunks) - 1) + 1))


def read_sbom(bundle: Path, m: Manifest) -> bytes | None:
    """The SBOM's exact bytes, read from the chunks and checked against ``m``'s hash (exit 3 when
    they differ); None for a bundle without one (built before issue 19)."""
    entry = sbom_entry(m)
    if entry is None:
        return None
    return read_small_files(bundle, m, [entry], cap=MAX_SBOM_BYTES)[SBOM_PATH]


def packages(data: bytes) -> list[dict[str, object]]:
    """The SBOM's ``library`` components: name, version, purl, hash (``<algorithm>:<hex>``) and
    license (an SPDX expression or a declared name; None when the wheel declares none)."""
    doc = _document(data)
    out: list[dict[str, object]] = []
    for comp in doc.get("components") or []:
        if not isinstance(comp, dict) or comp.get("type") != "library":
            continue
        out.append({"name": _text(comp.get("name")), "version": _text(comp.get("version")),
                    "purl": _text(comp.get("purl")), "hash": _hash(comp.get("hashes")),
                    "license": _license(comp.get("licenses"))})
    return sorted(out, key=lambda p: (str(p["name"]), str(p["version"])))


def _document(data: bytes) -> dict[str, Any]:
    try:
        # A model's file components (one per file: 200,000 at the cap, docs/format.md "Limits") are
        # dropped as they are parsed, so the reader holds the SBOM's bytes and little more.
        doc = json.loads(data, object_hook=_drop_files)
    except (ValueError, RecursionError):
        raise UnsafeContentError(f"{SBOM_PATH} is not JSON", subject=SBOM_PATH) from None
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        raise UnsafeContentError(f"{SBOM_PATH} is not a CycloneDX JSON document", subject=SBOM_PATH)
    return doc


def _drop_files(obj: dict[str, Any]) -> dict[str, Any] | None:
    return None if obj.get("type") == "file" else obj


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _hash(hashes: object) -> str | None:
    for h in hashes if isinstance(hashes, list) else []:
        if isinstance(h, dict) and h.get("alg") in _ALGORITHMS and isinstance(h.get("content"), str):
            return f"{_ALGORITHMS[h['alg']]}:{h['content']}"
    return None


def _license(licenses: object) -> str | None:
    for item in licenses if isinstance(licenses, list) else []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("expression"), str):
            return str(item["expression"])
        lic = item.get("license")
        if isinstance(lic, dict):
            named = lic.get("id") if isinstance(lic.get("id"), str) else lic.get("name")
            if isinstance(named, str):
                return named
    return None


def make_read_only(version_dir: Path) -> None:
    """``sbom/`` of a version's staging directory: files 0444, the folder 0555 (as ``safeguards/``),
    before it is renamed into view."""
    folder = version_dir / SBOM_DIR
    if not folder.is_dir() or folder.is_symlink():
        return
    for child in folder.iterdir():
        if child.is_file() and not child.is_symlink():
            os.chmod(child, 0o444)
    os.chmod(folder, 0o555)
