"""The host's ML-DSA-87 (FIPS 204) signing key, for checkpoints of a site whose trust root requires
ML-DSA-87 (docs/audit.md, "Keys"). Kept like the Ed25519 host key (installer/host/audit.py): PKCS#8
PEM, mode 0600, made at first use and never overwritten, its public half (SPKI PEM) beside it.

Signing needs ``cryptography`` >= 48 on an OpenSSL that has ML-DSA (3.5 or later); without it the
command refuses (exit 7) and says so. Imported only when a checkpoint is signed with such a key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..crypto.keys import MAX_KEY_FILE_BYTES, ML_DSA_87, PublicKey
from ..errors import HostError, UsageError
from ..kit import Refusal, open_regular
from .atomic import atomic_file, create_private

MAX_PQ_KEY_BYTES = 16 * 1024  # the PKCS#8 PEM of an ML-DSA-87 key holds its 32-byte seed, or the expanded key


@dataclass(frozen=True)
class MlDsaHostKey:
    key: Any  # cryptography's MLDSA87PrivateKey
    path: Path

    @property
    def public(self) -> PublicKey:
        return PublicKey(raw=self.key.public_key().public_bytes_raw(), algorithm=ML_DSA_87)

    @property
    def public_path(self) -> Path:
        return self.path.with_suffix(".pub")

    def sign(self, message: bytes) -> bytes:
        return bytes(self.key.sign(message))


def _mldsa() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import mldsa

        mldsa.MLDSA87PrivateKey.generate()  # raises on an OpenSSL without ML-DSA
    except Exception as e:  # ImportError, UnsupportedAlgorithm: either way it cannot sign here
        raise HostError(f"this host cannot sign with ML-DSA-87: {type(e).__name__}: {e} (needs cryptography >= 48 "
                        "on OpenSSL >= 3.5)", subject=ML_DSA_87) from None
    return mldsa


def ml_dsa_host_key(path: Path) -> tuple[MlDsaHostKey, bool]:
    """Load the ML-DSA-87 host key, or make it at first use. Return it and whether it was just made."""
    from cryptography.hazmat.primitives import serialization

    mldsa = _mldsa()
    try:
        fd, st = open_regular(path, refuse=_refuse)
    except _Missing:
        return _make(path, mldsa), True
    try:
        if st.st_mode & 0o077:
            raise HostError(f"host key {path} must be a regular file of mode 0600 (it is {st.st_mode & 0o777:o})",
                            subject=str(path))
        data = os.read(fd, MAX_PQ_KEY_BYTES + 1)
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{path}: not an unencrypted PKCS#8 private key", subject=str(path)) from None
    if not isinstance(key, mldsa.MLDSA87PrivateKey):
        raise UsageError(f"{path}: not an ML-DSA-87 private key", subject=str(path))
    out = MlDsaHostKey(key=key, path=path)
    if not out.public_path.exists():
        _write_public(out)
    return out, False


class _Missing(Exception):
    pass


def _refuse(r: Refusal) -> Exception:
    if r.reason == "missing":
        return _Missing()
    return HostError(f"cannot read the host key {r.path}: {r.strerror}", subject=str(r.path))


def _make(path: Path, mldsa: Any) -> MlDsaHostKey:
    from cryptography.hazmat.primitives import serialization

    key = MlDsaHostKey(key=mldsa.MLDSA87PrivateKey.generate(), path=path)
    pem = key.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        create_private(path, pem)
        _write_public(key)
    except OSError as e:
        raise HostError(f"cannot create the host key {path}: {e.strerror}", subject=str(path)) from None
    return key


def _write_public(key: MlDsaHostKey) -> None:
    pem = key.public.to_pem()
    assert len(pem) < MAX_KEY_FILE_BYTES
    try:
        with atomic_file(key.public_path) as f:
            f.write(pem)
    except OSError as e:
        raise HostError(f"cannot write {key.public_path}: {e.strerror}", subject=str(key.public_path)) from None
