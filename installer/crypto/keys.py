"""Public keys and detached signatures (docs/format.md, "Keys and signatures"; docs/trust.md, "Algorithms").

Two signature schemes, each a named algorithm:

- ``ed25519`` (FIPS 186-5 EdDSA), verified with PyNaCl;
- ``ml-dsa-87`` (FIPS 204 ML-DSA, category 5, the CNSA 2.0 choice), verified with ``cryptography``
  (imported only when an ML-DSA signature is checked, so an Ed25519-only site never needs it).

Public keys are PEM SubjectPublicKeyInfo files, the form ``openssl pkey -pubout`` writes, so a site can
check a bundle by hand. A key id is the SHA-256 of the key's DER SubjectPublicKeyInfo, whatever the
algorithm: ``openssl pkey -pubin -in KEY.pub -outform DER | sha256sum``. A signature file is named
``<keyid>.<algorithm>.sig`` and holds the raw signature bytes over the exact signed bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from ..errors import TrustError, UsageError

ED25519 = "ed25519"
ML_DSA_87 = "ml-dsa-87"
ALGORITHMS = (ED25519, ML_DSA_87)

# DER SubjectPublicKeyInfo is a fixed prefix and the raw public key, for both schemes
# (RFC 8410 for Ed25519; RFC 9881 / draft-ietf-lamps-dilithium-certificates for ML-DSA-87).
SPKI_PREFIXES = {
    ED25519: bytes.fromhex("302a300506032b6570032100"),
    ML_DSA_87: bytes.fromhex("30820a32300b060960864801650304031303820a2100"),
}
PUBLIC_KEY_BYTES = {ED25519: 32, ML_DSA_87: 2592}
SIGNATURE_BYTES_BY_ALGORITHM = {ED25519: 64, ML_DSA_87: 4627}

SPKI_PREFIX = SPKI_PREFIXES[ED25519]  # kept for callers of the v1 API
SIGNATURE_SUFFIX = f".{ED25519}.sig"
SIGNATURE_BYTES = SIGNATURE_BYTES_BY_ALGORITHM[ED25519]
MAX_KEY_FILE_BYTES = 16 * 1024
KEYID_HEX = 64


def pem_decode(data: bytes, label: str, *, source: str) -> bytes:
    """The DER bytes inside the single PEM block labelled ``label``."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"{source}: not a PEM file", subject=source) from None
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start or text.count(begin) != 1:
        raise UsageError(f"{source}: expected exactly one PEM block '{label}'", subject=source)
    body = "".join(text[start + len(begin):stop].split())
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error:
        raise UsageError(f"{source}: PEM body is not base64", subject=source) from None


def pem_encode(der: bytes, label: str) -> bytes:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode("ascii")


def is_keyid(value: str) -> bool:
    return len(value) == KEYID_HEX and not value.strip("0123456789abcdef")


@dataclass(frozen=True)
class PublicKey:
    raw: bytes
    algorithm: str = ED25519

    @property
    def der(self) -> bytes:
        return SPKI_PREFIXES[self.algorithm] + self.raw

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def to_pem(self) -> bytes:
        return pem_encode(self.der, "PUBLIC KEY")

    def to_entry(self) -> dict[str, str]:
        """This key's entry in a trust root's ``keys`` (docs/trust.md, "root.json")."""
        return {"algorithm": self.algorithm, "public": self.to_pem().decode("ascii")}

    @classmethod
    def from_pem(cls, data: bytes, *, source: str) -> PublicKey:
        if len(data) > MAX_KEY_FILE_BYTES:
            raise UsageError(f"{source}: key file over {MAX_KEY_FILE_BYTES} bytes", subject=source)
        return cls.from_der(pem_decode(data, "PUBLIC KEY", source=source), source=source)

    @classmethod
    def from_der(cls, der: bytes, *, source: str) -> PublicKey:
        for algorithm, prefix in SPKI_PREFIXES.items():
            if der.startswith(prefix) and len(der) == len(prefix) + PUBLIC_KEY_BYTES[algorithm]:
                return cls(raw=der[len(prefix):], algorithm=algorithm)
        raise UsageError(f"{source}: not an Ed25519 or ML-DSA-87 public key", subject=source)

    def verify(self, message: bytes, signature: bytes, *, subject: str) -> None:
        """Return if ``signature`` is this key's valid signature over ``message``; raise otherwise."""
        expected = SIGNATURE_BYTES_BY_ALGORITHM[self.algorithm]
        if len(signature) != expected:
            raise TrustError(f"signature {subject} is {len(signature)} bytes, not {expected}", subject=subject)
        if self.algorithm == ML_DSA_87:
            _verify_ml_dsa_87(self, message, signature, subject=subject)
            return
        try:
            nacl.signing.VerifyKey(self.raw).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
            raise TrustError(f"signature {subject} does not verify with key {self.keyid[:16]}", subject=subject) from None


class AlgorithmUnavailable(TrustError):
    """This host's ``cryptography`` cannot check the algorithm (reported as ``unsupported``; it does not count)."""


def _verify_ml_dsa_87(key: PublicKey, message: bytes, signature: bytes, *, subject: str) -> None:
    # Empty context string (FIPS 204 section 5.2), the default of cryptography and of
    # `openssl pkeyutl -verify -rawin`, so a site with OpenSSL >= 3.5 can check it by hand.
    try:
        from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric import mldsa
    except ImportError:
        raise AlgorithmUnavailable("ML-DSA-87 needs the 'cryptography' package (>= 48)", subject=subject) from None
    try:
        public = mldsa.MLDSA87PublicKey.from_public_bytes(key.raw)
    except UnsupportedAlgorithm:
        raise AlgorithmUnavailable("this cryptography build cannot verify ML-DSA-87", subject=subject) from None
    except ValueError:
        raise TrustError(f"key {key.keyid[:16]} is not a valid ML-DSA-87 public key", subject=subject) from None
    try:
        public.verify(signature, message)
    except InvalidSignature:
        raise TrustError(f"signature {subject} does not verify with key {key.keyid[:16]}", subject=subject) from None


def signature_file_name(keyid: str, algorithm: str = ED25519) -> str:
    return f"{keyid}.{algorithm}.sig"


def parse_signature_file_name(name: str) -> tuple[str, str] | None:
    """``(keyid, algorithm)`` for a ``<keyid>.<algorithm>.sig`` name, or None for any other name."""
    for algorithm in ALGORITHMS:
        suffix = f".{algorithm}.sig"
        if name.endswith(suffix):
            keyid = name[: -len(suffix)]
            return (keyid, algorithm) if is_keyid(keyid) else None
    return None
