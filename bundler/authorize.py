"""``gapship authorize``: write a signed site authorization (docs/safeguards.md, "Site authorizations").

The document model and its checks live in the installer (:mod:`gapship.installer.formats.authorization`); this side
only fills it in, signs its exact bytes with each authorize key, and writes the directory atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..installer.formats.authorization import (
    AUTHORIZATIONS, DOCUMENT, Authorization, BundleSelector, normalise_versions,
)
from ..installer.formats.timestamps import format_time
from ..installer.bundle.files import MANIFEST, SIGNATURES
from ..installer.host.fs import remove_tree
from ..installer.errors import HostError, TrustError, UsageError
from ..installer.crypto.keys import signature_file_name
from ..installer.trust import AuthorizeKeys, TrustStore, verify_authorization
from .expiry import parse_expires
from .keys import SigningKey



def selector(*, manifest_digest: str | None, name: str | None, versions: str | None) -> BundleSelector:
    if (manifest_digest is None) == (name is None and versions is None):
        raise UsageError("name the bundle with --manifest-digest, or with --bundle-name and --versions, not both")
    try:
        return BundleSelector(manifest_digest=manifest_digest, name=name,
                              versions=normalise_versions(versions) if versions is not None else None)
    except ValueError as e:
        raise UsageError(str(e)) from None


def create(*, site: str, bundle: BundleSelector, expires: str, require: Sequence[str],
           now: datetime | None = None) -> Authorization:
    """A validated authorization; ``expires`` is a duration from now (``30d``, ``12h``, ``2w``) or an
    absolute time, as for ``build --expires``; one already expired when it is made is refused."""
    issued = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    until = parse_expires(expires, start=issued)
    try:
        return Authorization(site=site, bundle=bundle, issued=format_time(issued), expires=format_time(until),
                             require_safeguards=tuple(sorted(set(require))))
    except ValueError as e:
        raise UsageError(str(e)) from None


@dataclass(frozen=True)
class Written:
    path: Path
    digest: str
    signers: tuple[str, ...]


def write(auth: Authorization, *, keys: Sequence[SigningKey], out: Path, trust: TrustStore | None = None) -> Written:
    """Sign ``auth`` with every key and write it as a directory: ``out`` itself (which must not
    exist), or, when ``out`` is a bundle directory, ``out/authorizations/<site>-<id>/``. With
    ``trust`` (the authority's trust directory), first check the signatures with the installer's own
    decision (:func:`~gapship.installer.trust.verify_authorization`: the authorize role, its threshold
    and algorithms, never a release key) and refuse to write one a site would refuse."""
    if not keys:
        raise UsageError("an authorization needs at least one --key")
    document = auth.to_bytes()
    digest = "sha256:" + hashlib.sha256(document).hexdigest()
    signatures = {signature_file_name(k.public.keyid, k.algorithm): k.sign(document) for k in keys}
    if trust is not None:
        _check_against(trust, document, signatures)
    target = out / AUTHORIZATIONS / f"{auth.site}-{digest[7:19]}" if (out / MANIFEST).is_file() else out
    if target.exists() or target.is_symlink():
        raise UsageError(f"{target} already exists; refusing to overwrite it", subject=str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as e:
        raise HostError(f"cannot create {target}: {e.strerror}", subject=str(target)) from None
    try:
        (staging / DOCUMENT).write_bytes(document)
        (staging / SIGNATURES).mkdir()
        for name, signature in signatures.items():  # <keyid>.ed25519.sig or <keyid>.ml-dsa-87.sig
            (staging / SIGNATURES / name).write_bytes(signature)
        os.chmod(staging, 0o755)
        os.rename(staging, target)
    except BaseException as e:
        remove_tree(staging)
        if isinstance(e, OSError):
            raise HostError(f"cannot write {target}: {e.strerror}", subject=str(target)) from None
        raise
    return Written(path=target, digest=digest, signers=tuple(sorted({k.public.keyid for k in keys})))


def _check_against(trust: TrustStore, document: bytes, signatures: dict[str, bytes]) -> None:
    try:
        verify_authorization(document, signatures, keys=AuthorizeKeys.from_trust(trust), source="the new authorization")
    except TrustError as e:
        raise UsageError(f"{e.message}; a site trusting {trust.source} would refuse it: sign with its authorize "
                         f"key(s)", subject="--key") from None
