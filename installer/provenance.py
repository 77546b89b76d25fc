"""Reading a bundle's provenance, ``provenance/statement.json`` (docs/format.md 11.4, docs/sbom.md).

The provenance is an in-toto Statement v1 with a SLSA provenance v1 predicate whose subjects are the
bundle's manifest and its chunks. A file inside the payload cannot name the digest of the manifest
that covers it, so the statement is a separately signed document beside the manifest, like
``parity/layout.json``: signed by the release role under the trust that accepted the manifest
(:func:`~.trust.verify_release`, exit 4), then bound to this bundle: its ``manifest.json`` subject
must carry the verified manifest digest, and its chunk subjects must be exactly the manifest's chunks
(another bundle's statement: exit 4). Only the fields needed for that binding are read; the
predicate is kept as bytes, installed read-only beside the version and shown, never interpreted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle.files import MAX_SIGNATURE_BYTES, MAX_SIGNATURE_FILES, SIGNATURES, Budget, list_entries, read_signatures
from .errors import IntegrityError, TrustError, UnsafeContentError
from .trust import VerifiedManifest, verify_release

PROVENANCE = "provenance"
STATEMENT = "statement.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
MANIFEST_SUBJECT = "manifest.json"
# One subject per chunk (at most 100,000) and one input per file (at most 200,000), each under 200
# bytes: well under the manifest's own cap, which it shares. Read after the manifest is verified.
MAX_STATEMENT_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class VerifiedProvenance:
    statement: bytes
    signature_files: dict[str, bytes]
    signers: tuple[str, ...]


def has_provenance(root: Path) -> bool:
    return (root / PROVENANCE).is_dir() and not (root / PROVENANCE).is_symlink()


def load_provenance(root: Path, verified: VerifiedManifest) -> VerifiedProvenance | None:
    """The verified statement of ``root/provenance/``, or None for a bundle without one (built
    before issue 19). A ``provenance/`` that is there is checked whole: signatures (exit 4), then
    its form (exit 6), then its binding to this manifest and its chunks (exit 4)."""
    folder = root / PROVENANCE
    try:
        names = list_entries(folder, 2, error=IntegrityError, shown=PROVENANCE)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise IntegrityError(f"{PROVENANCE} is not a directory", subject=PROVENANCE) from None
    where = f"{PROVENANCE}/{STATEMENT}"
    if STATEMENT not in names:
        raise TrustError(f"{PROVENANCE}/ has no {STATEMENT}", subject=where)
    budget = Budget(left=MAX_STATEMENT_BYTES + MAX_SIGNATURE_FILES * MAX_SIGNATURE_BYTES)
    statement = budget.read(folder / STATEMENT, MAX_STATEMENT_BYTES)
    return verify_provenance(statement, read_signatures(folder / SIGNATURES, budget, within=PROVENANCE), verified)


def verify_provenance(statement: bytes, signatures: dict[str, bytes], verified: VerifiedManifest) -> VerifiedProvenance:
    where = f"{PROVENANCE}/{STATEMENT}"
    if verified.trust is None:
        raise TrustError(f"cannot check {where}: no trust store", subject=where)
    verdict = verify_release(statement, signatures, verified.trust, what=f"the provenance {where}",
                             subject=f"{PROVENANCE}/{SIGNATURES}")
    doc = _statement(statement, where)
    check_subjects(doc["subject"], verified, where=where)
    return VerifiedProvenance(statement=statement, signature_files=dict(signatures), signers=verdict.signers)


def _statement(data: bytes, where: str) -> dict[str, Any]:
    try:
        # Only the subjects are read; the inputs (one per file: 200,000 at the cap) are dropped as they
        # are parsed, so that checking the statement stays within an install's memory bound.
        doc = json.loads(data, object_hook=_drop_inputs)
    except (ValueError, RecursionError):
        raise UnsafeContentError(f"{where} is not JSON", subject=where) from None
    if not (isinstance(doc, dict) and doc.get("_type") == STATEMENT_TYPE and doc.get("predicateType") == PREDICATE_TYPE
            and isinstance(doc.get("subject"), list) and isinstance(doc.get("predicate"), dict)):
        raise UnsafeContentError(f"{where} is not an in-toto Statement v1 with a SLSA provenance v1 predicate",
                                 subject=where)
    return doc


def _drop_inputs(obj: dict[str, Any]) -> dict[str, Any] | None:
    """A resource descriptor (``name`` and ``digest``) that cannot be a subject: an input of the predicate."""
    name = obj.get("name")
    if "digest" in obj and isinstance(name, str) and name != MANIFEST_SUBJECT and not name.startswith("chunks/"):
        return None
    return obj


def check_subjects(subjects: list[Any], verified: VerifiedManifest, *, where: str) -> None:
    """The statement's subjects must be exactly this manifest (by its verified digest) and its chunks
    in order, each by the manifest's hash: anything else is the provenance of another bundle."""
    m = verified.manifest
    algorithm, manifest_hex = verified.digest.split(":", 1)
    expected = [(MANIFEST_SUBJECT, manifest_hex), *((f"chunks/{c.name}", c.hash) for c in m.chunks)]
    found = [(s.get("name"), (s.get("digest") or {}).get(algorithm)) if isinstance(s, dict) and
             isinstance(s.get("digest"), dict) else (None, None) for s in subjects]
    if found != expected:
        first = next((i for i, (a, b) in enumerate(zip(found, expected)) if a != b), min(len(found), len(expected)))
        named = found[first][0] if first < len(found) else "(missing)"
        raise TrustError(f"{where} is not this bundle's: its subject {first} ({named}) is not "
                         f"{expected[first][0] if first < len(expected) else 'expected'} with the manifest's "
                         f"{algorithm} digest", subject=where)


def install_provenance(staging: Path, provenance: VerifiedProvenance) -> None:
    """Write the statement and its signatures into a version's staging directory, read-only (files
    0444, directories 0555), before it is renamed into view."""
    folder = staging / PROVENANCE
    (folder / SIGNATURES).mkdir(parents=True)
    (folder / STATEMENT).write_bytes(provenance.statement)
    for name, data in provenance.signature_files.items():
        (folder / SIGNATURES / name).write_bytes(data)
    for path in [folder / STATEMENT, *(folder / SIGNATURES).iterdir()]:
        path.chmod(0o444)
    (folder / SIGNATURES).chmod(0o555)
    folder.chmod(0o555)
