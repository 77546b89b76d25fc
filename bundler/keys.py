"""Ed25519 private keys for offline signing (docs/keys.md).

A private key is an unencrypted PKCS#8 PEM file (``openssl pkey`` reads it), written with mode 0600
and never overwritten. Keep it on removable media or in an HSM-backed vault; it never belongs in a
repository, not even a test one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from ..installer.errors import HostError, UsageError
from ..installer.keys import MAX_KEY_FILE_BYTES, PublicKey, pem_decode, pem_encode

# DER PKCS#8 PrivateKeyInfo for Ed25519 (RFC 8410) is this fixed prefix and the 32-byte seed.
PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")


@dataclass(frozen=True)
class SigningKey:
    seed: bytes

    @property
    def public(self) -> PublicKey:
        return PublicKey(raw=bytes(nacl.signing.SigningKey(self.seed).verify_key))

    def sign(self, message: bytes) -> bytes:
        return nacl.signing.SigningKey(self.seed).sign(message).signature

    def to_pem(self) -> bytes:
        return pem_encode(PKCS8_PREFIX + self.seed, "PRIVATE KEY")

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(seed=bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            data = path.read_bytes()[: MAX_KEY_FILE_BYTES + 1]
        except FileNotFoundError:
            raise UsageError(f"key file {str(path)!r} does not exist", subject=str(path)) from None
        except OSError as e:
            raise UsageError(f"cannot read key file {str(path)!r}: {e.strerror}", subject=str(path)) from None
        if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
            raise UsageError(f"{path} is a public key; signing needs the private .key file", subject=str(path))
        der = pem_decode(data, "PRIVATE KEY", source=str(path))
        if len(der) != len(PKCS8_PREFIX) + 32 or not der.startswith(PKCS8_PREFIX):
            raise UsageError(f"{path}: not an unencrypted Ed25519 PKCS#8 private key", subject=str(path))
        return cls(seed=der[len(PKCS8_PREFIX):])


def keygen(name: str, out_dir: Path) -> tuple[Path, Path, PublicKey]:
    """Write ``NAME.key`` (0600, never overwritten) and ``NAME.pub``; return their paths and the key."""
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"key name {name!r} must be a plain file name", subject=name)
    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private, public):
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path} already exists; refusing to overwrite a key", subject=str(path))
    key = SigningKey.generate()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, key.to_pem())
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(public, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, key.public.to_pem())
        finally:
            os.close(fd)
    except FileExistsError as e:
        raise UsageError(f"{e.filename} already exists; refusing to overwrite a key", subject=str(e.filename)) from None
    except OSError as e:
        raise HostError(f"cannot write keys to {out_dir}: {e.strerror}", subject=str(out_dir)) from None
    return private, public, key.public
