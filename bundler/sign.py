"""``gapship sign``: add a detached signature to a bundle (docs/format.md, "Signatures").

The file is ``signatures/<keyid>.<algorithm>.sig`` (``ed25519`` or ``ml-dsa-87``): signing a bundle with
an Ed25519 key and with an ML-DSA-87 key gives the hybrid pair a root may require (docs/trust.md)."""

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
    """Write ``signatures/<keyid>.<algorithm>.sig`` atomically; return the key id."""
    keyid = key.public.keyid
    folder = bundle / SIGNATURES
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sig-")
    try:
        view = memoryview(key.sign(manifest_bytes))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / signature_file_name(keyid, key.algorithm))
    except BaseException:
        os.unlink(tmp)
        raise
    return keyid
