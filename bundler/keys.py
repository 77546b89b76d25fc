"""Private keys for offline signing: Ed25519 and ML-DSA-87 (docs/keys.md, docs/trust.md "Algorithms").

A private key is an unencrypted PKCS#8 PEM file (``openssl pkey`` reads it; ML-DSA needs OpenSSL >=
3.5), written with mode 0600 and never overwritten. An ML-DSA-87 key is stored in the 32-byte seed form
of RFC 9881 (what ``cryptography`` writes). Keep keys on removable media or in an HSM-backed vault; they
never belong in a repository, not even a test one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing

from ..installer.errors import HostError, UsageError
from ..installer.crypto.keys import ALGORITHMS, ED25519, ML_DSA_87, MAX_KEY_FILE_BYTES, PublicKey, pem_decode, pem_encode
from ..installer.kit import Refusal, read_bounded

# DER PKCS#8 PrivateKeyInfo for Ed25519 (RFC 8410) is this fixed prefix and the 32-byte seed.
PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
# ... and for ML-DSA-87 in the seed-only form (RFC 9881, the "seed [0]" choice).
MLDSA87_PKCS8_PREFIX = bytes.fromhex("3034020100300b060960864801650304031304228020")
SEED_BYTES = 32


@dataclass(frozen=True)
class SigningKey:
    seed: bytes
    algorithm: str = ED25519

    @property
    def public(self) -> PublicKey:
        if self.algorithm == ML_DSA_87:
            return PublicKey(raw=_mldsa(self.seed).public_key().public_bytes_raw(), algorithm=ML_DSA_87)
        return PublicKey(raw=bytes(nacl.signing.SigningKey(self.seed).verify_key))

    def sign(self, message: bytes) -> bytes:
        if self.algorithm == ML_DSA_87:
            signature: bytes = _mldsa(self.seed).sign(message)  # empty context, as the verifier expects
            return signature
        return _ed25519_sign(self.seed, message)

    def to_pem(self) -> bytes:
        prefix = MLDSA87_PKCS8_PREFIX if self.algorithm == ML_DSA_87 else PKCS8_PREFIX
        return pem_encode(prefix + self.seed, "PRIVATE KEY")

    @classmethod
    def generate(cls, algorithm: str = ED25519) -> SigningKey:
        if algorithm not in ALGORITHMS:
            raise UsageError(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}", subject=algorithm)
        if algorithm == ML_DSA_87:
            return cls(seed=_mldsa_generate().private_bytes_raw(), algorithm=ML_DSA_87)
        return cls(seed=bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        data = read_bounded(path, cap=MAX_KEY_FILE_BYTES, refuse=_refuse_key_file, follow_symlinks=True)
        if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
            raise UsageError(f"{path} is a public key; signing needs the private .key file", subject=str(path))
        der = pem_decode(data, "PRIVATE KEY", source=str(path))
        if len(der) == len(PKCS8_PREFIX) + SEED_BYTES and der.startswith(PKCS8_PREFIX):
            return cls(seed=der[len(PKCS8_PREFIX):])
        if len(der) == len(MLDSA87_PKCS8_PREFIX) + SEED_BYTES and der.startswith(MLDSA87_PKCS8_PREFIX):
            return cls(seed=der[len(MLDSA87_PKCS8_PREFIX):], algorithm=ML_DSA_87)
        return cls(seed=_mldsa_seed_from_der(der, source=str(path)), algorithm=ML_DSA_87)


def _refuse_key_file(r: Refusal) -> Exception:
    if r.reason == "missing":
        return UsageError(f"key file {str(r.path)!r} does not exist", subject=str(r.path))
    return UsageError(f"cannot read key file {str(r.path)!r}: {r.strerror}", subject=str(r.path))


def load_public_key(path: Path, *, source: str | None = None) -> PublicKey:
    """The public key in the ``.pub`` file ``path`` named by the user (a symlink is followed);
    ``source`` names it in messages (default: the path)."""
    shown = source or str(path)

    def refuse(r: Refusal) -> Exception:
        if r.reason == "too-large":  # PublicKey.from_pem's words for a key file over the cap
            return UsageError(f"{shown}: key file over {MAX_KEY_FILE_BYTES} bytes", subject=shown)
        return UsageError(f"cannot read {path}: {r.strerror}", subject=str(path))

    return PublicKey.from_pem(read_bounded(path, cap=MAX_KEY_FILE_BYTES, refuse=refuse, follow_symlinks=True),
                              source=shown)


def _ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """A detached Ed25519 signature. Through ``cryptography``, not PyNaCl: PyNaCl signs in combined mode
    and copies the message three times (for a 31 MB manifest of 200,000 files, 90 MiB more at the peak
    of a build). Ed25519 is deterministic (RFC 8032), so the bytes are the same either way."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def _mldsa(seed: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric import mldsa

    return mldsa.MLDSA87PrivateKey.from_seed_bytes(seed)


def _mldsa_generate() -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import mldsa

    try:
        return mldsa.MLDSA87PrivateKey.generate()
    except UnsupportedAlgorithm:
        raise UsageError("this cryptography build cannot make ML-DSA-87 keys (needs cryptography >= 48)",
                         subject=ML_DSA_87) from None


def _mldsa_seed_from_der(der: bytes, *, source: str) -> bytes:
    """Other PKCS#8 encodings of ML-DSA-87 (e.g. OpenSSL's seed-and-expanded form) that keep the seed."""
    from cryptography.hazmat.primitives.asymmetric import mldsa
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    try:
        key = load_der_private_key(der, password=None)
        if isinstance(key, mldsa.MLDSA87PrivateKey):
            seed: bytes = key.private_bytes_raw()
            return seed
    except (ValueError, TypeError):
        pass
    raise UsageError(f"{source}: not an unencrypted Ed25519 or ML-DSA-87 PKCS#8 private key", subject=source)


def keygen(name: str, out_dir: Path, algorithm: str = ED25519) -> tuple[Path, Path, PublicKey]:
    """Write ``NAME.key`` (0600, never overwritten) and ``NAME.pub``; return their paths and the key."""
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"key name {name!r} must be a plain file name", subject=name)
    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private, public):
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path} already exists; refusing to overwrite a key", subject=str(path))
    key = SigningKey.generate(algorithm)
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
