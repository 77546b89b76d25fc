"""``gapship sign``: add a detached signature to a bundle (docs/format.md, "Signatures").

The file is ``signatures/<keyid>.<algorithm>.sig`` (``ed25519`` or ``ml-dsa-87``): signing a bundle with
an Ed25519 key and with an ML-DSA-87 key gives the hybrid pair a root may require (docs/trust.md).
With ``--sigstore``, a keyless sigstore signature instead (docs/sigstore.md)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..installer.crypto.sigstore import SIGSTORE_SUFFIX, certificate_identity, one_line
from ..installer.host.atomic import atomic_write
from ..installer.bundle.files import MANIFEST, SIGNATURES, read_capped
from ..installer.errors import HostError, IntegrityError, UsageError
from ..installer.crypto.keys import signature_file_name
from ..installer.formats.manifest import MAX_MANIFEST_BYTES, Manifest
from ..installer.provenance import PROVENANCE
from .keys import SigningKey
from .provenance import provenance_statement

if TYPE_CHECKING:
    from sigstore.models import Bundle, ClientTrustConfig
    from sigstore.oidc import IdentityToken


def sign_bundle(bundle: Path, key: SigningKey) -> tuple[str, Manifest]:
    """Sign the exact manifest bytes of ``bundle``, and its parity layout when it has one
    (docs/format.md, section 12) and its provenance (11.4); refuse to sign a manifest or layout that is not valid."""
    from .parity import sign_parity
    from .provenance import sign_provenance

    data = read_capped(bundle / MANIFEST, MAX_MANIFEST_BYTES, missing=IntegrityError)
    manifest = Manifest.from_bytes(data)
    try:
        (bundle / SIGNATURES).mkdir(exist_ok=True)
        keyid = write_signature(bundle, data, key)
        sign_parity(bundle, key, manifest_bytes=data, algorithm=manifest.hash_algorithm)
        sign_provenance(bundle, key)  # the provenance beside the manifest, when the bundle has one (docs/sbom.md)
        return keyid, manifest
    except OSError as e:
        raise HostError(f"cannot write a signature into {bundle}: {e.strerror}", subject=str(bundle)) from None


def write_signature(bundle: Path, manifest_bytes: bytes, key: SigningKey) -> str:
    """Write ``signatures/<keyid>.<algorithm>.sig`` atomically; return the key id."""
    keyid = key.public.keyid
    atomic_write(bundle / SIGNATURES / signature_file_name(keyid, key.algorithm), key.sign(manifest_bytes))
    return keyid


# --- sigstore (keyless): the connected side talks to Fulcio, Rekor and an OIDC provider ---

@dataclass(frozen=True)
class SigstoreSignature:
    """A sigstore signature written into a bundle, and what a site must pin to accept it."""

    file: str  # signatures/<name>.sigstore.json
    identity: str  # the certificate's identity (SAN): pass it to `gapship trust add-sigstore --identity`
    issuer: str  # the OIDC issuer: `--issuer`


def sign_bundle_sigstore(bundle: Path, *, identity_token: str | None = None,
                         interactive: bool = False) -> tuple[SigstoreSignature, Manifest]:
    """Sign the exact manifest bytes of ``bundle`` with sigstore (production instance) and store the
    sigstore bundle as ``signatures/<name>.sigstore.json``. The identity comes from ``identity_token``,
    else ambient credentials (CI), else, when ``interactive``, a browser OIDC flow. Needs the network."""
    data = read_capped(bundle / MANIFEST, MAX_MANIFEST_BYTES, missing=IntegrityError)
    manifest = Manifest.from_bytes(data)
    _require_sigstore_signing()
    token = _given_or_ambient_identity(identity_token)  # offline: fail fast before any network use
    if token is None and not interactive:
        raise UsageError("no OIDC identity for sigstore: pass --identity-token, run in CI with OIDC "
                         "credentials, or run in a terminal for the browser flow", subject="--identity-token")
    config = _trust_config()
    token = token or _interactive_identity(config)
    signed = _sign(config, token, data)
    identity, issuer = _certificate_identity(signed)
    name = hashlib.sha256(f"{identity}\n{issuer}".encode()).hexdigest()[:16] + SIGSTORE_SUFFIX
    # The provenance beside the manifest is accepted by the same release decision (docs/format.md 11.4):
    # a site that trusts only this identity needs its signature there too.
    statement = provenance_statement(bundle)
    signed_statement = _sign(config, token, statement) if statement is not None else None
    try:
        (bundle / SIGNATURES).mkdir(exist_ok=True)
        atomic_write(bundle / SIGNATURES / name, signed.to_json().encode("utf-8"))
        if signed_statement is not None:
            atomic_write(bundle / PROVENANCE / SIGNATURES / name, signed_statement.to_json().encode("utf-8"))
    except OSError as e:
        raise HostError(f"cannot write a signature into {bundle}: {e.strerror}", subject=str(bundle)) from None
    return SigstoreSignature(file=f"{SIGNATURES}/{name}", identity=identity, issuer=issuer), manifest


def _require_sigstore_signing() -> None:
    try:
        import sigstore.sign  # noqa: F401
    except ImportError as e:
        raise HostError("gapship sign --sigstore needs sigstore: install gapship[sigstore]", subject="sigstore") from e


def _trust_config() -> ClientTrustConfig:
    """Sigstore's production trust config, refreshed through TUF (online: this is the connected side)."""
    from sigstore.models import ClientTrustConfig

    try:
        return ClientTrustConfig.production()
    except Exception as e:
        raise HostError(f"cannot fetch sigstore's trust config (network?): {one_line(e)}", subject="sigstore") from e


def _given_or_ambient_identity(token: str | None) -> IdentityToken | None:
    from sigstore.oidc import IdentityToken, detect_credential

    try:
        raw = token or detect_credential()
        return IdentityToken(raw) if raw else None
    except Exception as e:
        raise UsageError(f"sigstore identity token refused: {one_line(e)}", subject="--identity-token") from e


def _interactive_identity(config: ClientTrustConfig) -> IdentityToken:
    """The browser OIDC flow; sigstore-python prompts on the terminal itself."""
    from sigstore.oidc import Issuer

    try:
        return Issuer(config.signing_config.get_oidc_url()).identity_token()
    except Exception as e:
        raise UsageError(f"sigstore identity token refused: {one_line(e)}", subject="--identity-token") from e


def _sign(config: ClientTrustConfig, token: IdentityToken, data: bytes) -> Bundle:
    from sigstore.sign import SigningContext

    try:
        with SigningContext.from_trust_config(config).signer(token, cache=False) as signer:
            return signer.sign_artifact(data)
    except Exception as e:
        raise HostError(f"sigstore signing failed: {one_line(e)}", subject="sigstore") from e


def _certificate_identity(signed: Bundle) -> tuple[str, str]:
    """What a site pins, read from the issued certificate as the verifier will (installer/crypto/sigstore.py):
    for GitHub Actions the SAN is the workflow URL and ref, not the token's ``sub``."""
    return certificate_identity(signed.signing_certificate)


