"""``gapship inspect``: what a bundle holds and who signed it, read as it is (verified only with
``--trust``; docs/cli.md)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from ..bundle.files import MAX_SIGNATURE_FILES, SIGNATURES, read_raw_bundle
from ..errors import UsageError
from ..provenance import PROVENANCE, STATEMENT, has_provenance
from ..sbom import SBOM_PATH, packages, read_sbom, sbom_chunks_present, sbom_entry
from ..formats.manifest import Component, FileEntry, Manifest
from ..trust import SignatureCheck, TrustStore, parse_unverified, verify_release
from .group import bundle_argument, cli, emit, human_size, json_option, trust_dir_option


@cli.command()
@bundle_argument
@trust_dir_option(help="Also say which signatures are valid for this trust directory.", required=False)
@click.option("--sbom", "show_sbom", is_flag=True,
              help="Print the bundle's SBOM (sbom/bom.cdx.json), exactly the bundled bytes, and nothing else.")
@json_option
def inspect(bundle: Path, trust_dir: Path | None, show_sbom: bool, as_json: bool) -> None:
    """Show what BUNDLE holds, who signed it and its sizes. Does NOT verify anything unless --trust."""
    raw = read_raw_bundle(bundle)
    m = parse_unverified(raw)
    # The SBOM's bytes are checked against the manifest's hash (exit 3 when they differ); the manifest
    # itself only with --trust, as for everything inspect shows.
    sbom = read_sbom(bundle, m) if show_sbom or sbom_chunks_present(bundle, m) else None
    if show_sbom:
        if sbom is None:
            raise UsageError(f"{m.name} {m.version} carries no {SBOM_PATH} (built before gapship wrote SBOMs)",
                             subject=SBOM_PATH)
        if trust_dir is not None:
            verify_release(raw.manifest_bytes, raw.signatures, TrustStore.from_dir(trust_dir))
        sys.stdout.flush()
        sys.stdout.buffer.write(sbom)  # the exact bytes: no decoding, no newline added
        sys.stdout.buffer.flush()
        return
    checks: tuple[SignatureCheck, ...] = ()
    if trust_dir is not None:
        from ..trust import check_signatures

        checks = check_signatures(raw.manifest_bytes, raw.signatures, TrustStore.from_dir(trust_dir))
    signatures = [c.to_dict() for c in checks] if checks else [{"file": n} for n in sorted(raw.signatures)]
    payload: dict[str, Any] = {
        "verified": False,
        "bundle": {"name": m.name, "version": m.version},
        "created": m.created,
        "expires": m.expires,
        "format_version": m.format_version,
        "hash_algorithm": m.hash_algorithm,
        "chunk_size": m.chunk_size,
        "chunks": len(m.chunks),
        "payload_size": m.payload_size,
        # a model's origin, card and left_out (docs/format.md, 11.2): null when the manifest has none
        "components": [{"kind": c.kind, "name": c.name, "files": len(c.files), "bytes": c.size,
                        "origin": None, "card": None, "left_out": None, **c.extras()} for c in m.components],
        "signatures": signatures,
        "base": m.base.to_dict() if m.base is not None else None,  # a delta's base (docs/format.md, 11.1)
        "carried": _sums(m.payload_files()),  # the files whose bytes are in the payload
        "from_base": _sums(m.base_files()),  # the files a delta takes from its installed base
        "packages": packages(sbom) if sbom is not None else None,  # the SBOM's wheels (docs/sbom.md)
        "sbom": SBOM_PATH if sbom_entry(m) is not None else None,
        "provenance": _provenance(bundle),
    }
    lines = [
        f"{m.name} {m.version} (format v{m.format_version}, created {m.created})",
        f"payload: {human_size(m.payload_size)} in {len(m.chunks)} chunk(s) of {human_size(m.chunk_size)}, {m.hash_algorithm}",
        *(line for c in m.components for line in _component_lines(c)),
        *_delta_lines(m, payload),
        *_package_lines(payload["packages"]),
        "signatures:",
        *(f"  {s['file']}  {s.get('status', '')}" for s in signatures),
    ]
    if not checks:
        lines.append("(not verified: inspect reads the manifest as it is; run `gapship verify` to check it)")
    emit(as_json, payload, lines)


def _component_lines(c: Component) -> list[str]:
    lines = [f"  {c.kind:<12} {c.name:<24} {len(c.files):>6} files {human_size(c.size):>12}"]
    if c.origin is not None:
        lines.append(f"    from {c.origin.hf_repo}" + (f" at {c.origin.revision}" if c.origin.revision else ""))
    if c.left_out is not None:
        lines.append(f"    left out by its selection: {c.left_out.files} files ({human_size(c.left_out.bytes)})")
    shown = {k: v for k, v in c.card.to_dict().items() if k != "description"} if c.card is not None else {}
    if shown:  # the description may be 4096 characters: --json has it
        lines.append("    card: " + ", ".join(f"{k} {v!r}" for k, v in shown.items()))
    return lines


def _provenance(bundle: Path) -> dict[str, object] | None:
    """The provenance files present (unverified here: ``verify`` checks them, docs/format.md 11.4)."""
    if not has_provenance(bundle):
        return None
    try:
        names = sorted(os.listdir(bundle / PROVENANCE / SIGNATURES))[:MAX_SIGNATURE_FILES]
    except OSError:
        names = []
    return {"file": f"{PROVENANCE}/{STATEMENT}", "signatures": [f"{PROVENANCE}/{SIGNATURES}/{n}" for n in names]}


def _package_lines(found: list[dict[str, object]] | None) -> list[str]:
    if not found:
        return []
    return [f"packages ({len(found)}, from {SBOM_PATH}):",
            *(f"  {p['name']} {p['version']}  {p['license'] or '(no license declared)'}" for p in found)]


def _sums(files: Iterable[FileEntry]) -> dict[str, int]:
    count = size = 0
    for f in files:
        count, size = count + 1, size + f.size
    return {"files": count, "bytes": size}


def _delta_lines(m: Manifest, payload: dict[str, Any]) -> list[str]:
    if m.base is None:
        return []
    carried, reused = payload["carried"], payload["from_base"]
    return [f"delta of {m.base.name} {m.base.version} ({m.base.manifest_digest})",
            f"  carries {carried['files']} files ({human_size(carried['bytes'])}); takes {reused['files']} files "
            f"({human_size(reused['bytes'])}) from the installed base"]
