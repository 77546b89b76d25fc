"""Ed25519 public keys and detached signatures (docs/format.md, "Keys and signatures").

Public keys are PEM SubjectPublicKeyInfo files, the form ``openssl pkey -pubout`` writes, so a site can
check a bundle by hand. A key id is the SHA-256 of the key's DER SubjectPublicKeyInfo:
``openssl pkey -pubin -in KEY.pub -outform DER | sha256sum``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from .errors import TrustError, UsageError

ED25519 = "ed25519"
# DER SubjectPublicKeyInfo for Ed25519 (RFC 8410) is this fixed prefix and the 32-byte key.
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
SIGNATURE_SUFFIX = f".{ED25519}.sig"
SIGNATURE_BYTES = 64
MAX_KEY_FILE_BYTES = 16 * 1024


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


@dataclass(frozen=True)
class PublicKey:
    raw: bytes
    algorithm: str = ED25519

    @property
    def der(self) -> bytes:
        return SPKI_PREFIX + self.raw

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def to_pem(self) -> bytes:
        return pem_encode(self.der, "PUBLIC KEY")

    @classmethod
    def from_pem(cls, data: bytes, *, source: str) -> PublicKey:
        if len(data) > MAX_KEY_FILE_BYTES:
            raise UsageError(f"{source}: key file over {MAX_KEY_FILE_BYTES} bytes", subject=source)
        der = pem_decode(data, "PUBLIC KEY", source=source)
        if len(der) != len(SPKI_PREFIX) + 32 or not der.startswith(SPKI_PREFIX):
            raise UsageError(f"{source}: not an Ed25519 public key", subject=source)
        return cls(raw=der[len(SPKI_PREFIX):])

    def verify(self, message: bytes, signature: bytes, *, subject: str) -> None:
        """Return if ``signature`` is this key's valid signature over ``message``; raise otherwise."""
        if len(signature) != SIGNATURE_BYTES:
            raise TrustError(f"signature {subject} is {len(signature)} bytes, not {SIGNATURE_BYTES}", subject=subject)
        try:
            nacl.signing.VerifyKey(self.raw).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
            raise TrustError(f"signature {subject} does not verify with key {self.keyid[:16]}", subject=subject) from None


def signature_file_name(keyid: str) -> str:
    return f"{keyid}{SIGNATURE_SUFFIX}"


def keyid_of_signature_file(name: str) -> str | None:
    """The key id a signature file names, or None when it is not an Ed25519 signature file."""
    if not name.endswith(SIGNATURE_SUFFIX):
        return None
    keyid = name[: -len(SIGNATURE_SUFFIX)]
    if len(keyid) != 64 or keyid.strip("0123456789abcdef"):
        return None
    return keyid
