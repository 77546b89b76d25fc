"""``gapship sign``: add a detached Ed25519 signature to a bundle (docs/format.md, "Signatures")."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..installer.bundle import MANIFEST, SIGNATURES, read_capped
from ..installer.errors import HostError, IntegrityError
from ..installer.keys import signature_file_name
from ..installer.manifest import MAX_MANIFEST_BYTES, Manifest
from .keys import SigningKey


def sign_bundle(bundle: Path, key: SigningKey) -> tuple[str, Manifest]:
    """Sign the exact manifest bytes of ``bundle``; refuse to sign a manifest that is not valid."""
    data = read_capped(bundle / MANIFEST, MAX_MANIFEST_BYTES, missing=IntegrityError)
    manifest = Manifest.from_bytes(data)
    try:
        (bundle / SIGNATURES).mkdir(exist_ok=True)
        return write_signature(bundle, data, key), manifest
    except OSError as e:
        raise HostError(f"cannot write a signature into {bundle}: {e.strerror}", subject=str(bundle)) from None


def write_signature(bundle: Path, manifest_bytes: bytes, key: SigningKey) -> str:
    """Write ``signatures/<keyid>.ed25519.sig`` atomically; return the key id."""
    keyid = key.public.keyid
    folder = bundle / SIGNATURES
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sig-")
    try:
        os.write(fd, key.sign(manifest_bytes))
        os.fsync(fd)
        os.close(fd)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / signature_file_name(keyid))
    except BaseException:
        os.unlink(tmp)
        raise
    return keyid
