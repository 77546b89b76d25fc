"""The one place that decides trust (docs/format.md, "Verification order").

:func:`verify_manifest` takes the raw manifest bytes and the raw signature files, checks the signatures
against the site's trust store, and only then parses the manifest. Everything downstream works on the
:class:`VerifiedManifest` it returns; nothing else in gapship reads an unverified manifest field (the
one exception, ``inspect``, says so in its name: :func:`parse_unverified`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._sigstore import SigstoreSigner, check_sigstore_file, is_sigstore_signature_file, load_sigstore_signers
from .bundle import RawBundle
from .errors import TrustError, UsageError
from .hashing import new_hasher
from .keys import MAX_KEY_FILE_BYTES, PublicKey, keyid_of_signature_file
from .manifest import Manifest

MAX_TRUSTED_KEYS = 256


@dataclass(frozen=True)
class TrustStore:
    """The keys a site accepts. For now a directory of ``*.pub`` files, any one of which suffices."""

    keys: dict[str, PublicKey]
    source: str
    names: dict[str, str]  # key id -> the file it came from, for messages
    threshold: int = 1
    sigstore: tuple[SigstoreSigner, ...] = ()  # pinned sigstore signers (docs/sigstore.md)

    @classmethod
    def from_dir(cls, path: Path) -> TrustStore:
        if not path.is_dir():
            raise UsageError(f"trust directory {str(path)!r} does not exist", subject=str(path))
        pubs = sorted(p for p in path.iterdir() if p.name.endswith(".pub"))
        sigstore = load_sigstore_signers(path)  # TRUSTDIR/sigstore/<signer>.toml
        if not pubs and not sigstore:
            raise TrustError(f"trust directory {str(path)!r} holds no *.pub keys", subject=str(path))
        if len(pubs) > MAX_TRUSTED_KEYS:
            raise TrustError(f"trust directory holds over {MAX_TRUSTED_KEYS} keys", subject=str(path))
        keys: dict[str, PublicKey] = {}
        names: dict[str, str] = {}
        for pub in pubs:
            if pub.stat().st_size > MAX_KEY_FILE_BYTES:
                raise UsageError(f"{pub}: key file over {MAX_KEY_FILE_BYTES} bytes", subject=str(pub))
            key = PublicKey.from_pem(pub.read_bytes(), source=str(pub))
            keys[key.keyid] = key
            names[key.keyid] = pub.name
        names.update({s.signer_id: s.description for s in sigstore})
        return cls(keys=keys, source=str(path), names=names, sigstore=sigstore)


@dataclass(frozen=True)
class SignatureCheck:
    """What was found about one signature file (reported by ``verify`` and ``inspect``)."""

    file: str
    keyid: str | None
    status: str  # valid | untrusted | invalid | unsupported | unchecked (sigstore extra missing)
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "keyid": self.keyid, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose bytes were signed by enough trusted keys. Only :func:`verify_manifest`
    makes one."""

    manifest: Manifest
    manifest_bytes: bytes
    digest: str  # "<algorithm>:<hex>" of manifest_bytes, with the manifest's own algorithm
    signers: tuple[str, ...]  # key ids of the valid trusted signatures, sorted
    checks: tuple[SignatureCheck, ...]
    signature_files: dict[str, bytes]  # the raw signature files, kept with the install


def check_signatures(manifest_bytes: bytes, signatures: dict[str, bytes], trust: TrustStore) -> tuple[SignatureCheck, ...]:
    """Check every signature file; each trusted key is counted at most once."""
    checks = []
    for name, sig in sorted(signatures.items()):
        if is_sigstore_signature_file(name):  # a sigstore signer counts once, as "sigstore:<name>"
            found = check_sigstore_file(name, sig, manifest_bytes, trust.sigstore)
            checks.append(SignatureCheck(name, found.signer, found.status, found.detail))
            continue
        keyid = keyid_of_signature_file(name)
        if keyid is None:
            checks.append(SignatureCheck(name, None, "unsupported", "not an <keyid>.ed25519.sig file"))
            continue
        key = trust.keys.get(keyid)
        if key is None:
            checks.append(SignatureCheck(name, keyid, "untrusted", "key not in the trust store"))
            continue
        try:
            key.verify(manifest_bytes, sig, subject=f"signatures/{name}")
        except TrustError as e:
            checks.append(SignatureCheck(name, keyid, "invalid", e.message))
            continue
        checks.append(SignatureCheck(name, keyid, "valid"))
    return tuple(checks)


def verify_manifest(raw: RawBundle, *, trust: TrustStore) -> VerifiedManifest:
    """Signatures first, then parsing: return the verified manifest or raise."""
    checks = check_signatures(raw.manifest_bytes, raw.signatures, trust)
    signers = tuple(sorted({c.keyid for c in checks if c.status == "valid" and c.keyid}))
    if len(signers) < trust.threshold:
        raise TrustError(_no_signature_message(checks, trust), subject="signatures")
    manifest = Manifest.from_bytes(raw.manifest_bytes)
    return VerifiedManifest(
        manifest=manifest,
        manifest_bytes=raw.manifest_bytes,
        digest=manifest_digest(raw.manifest_bytes, manifest.hash_algorithm),
        signers=signers,
        checks=checks,
        signature_files=dict(raw.signatures),
    )


def manifest_digest(data: bytes, algorithm: str) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"


def parse_unverified(raw: RawBundle) -> Manifest:
    """Parse a manifest WITHOUT checking any signature: for ``inspect`` only, which says so."""
    return Manifest.from_bytes(raw.manifest_bytes)


def _no_signature_message(checks: tuple[SignatureCheck, ...], trust: TrustStore) -> str:
    if not checks:
        return "bundle carries no signature"
    found = "; ".join(f"{c.file}: {c.status}" + (f" ({c.detail})" if c.status == "unchecked" else "") for c in checks)
    return f"no valid signature from a key in {trust.source} (found {found})"


