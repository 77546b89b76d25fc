"""``gapship authorize``: write a signed site authorization (docs/safeguards.md, "Site authorizations").

The document model and its checks live in the installer (:mod:`..installer.authorization`); this side
only fills it in, signs its exact bytes with each authorize key, and writes the directory atomically.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..installer.authorization import (
    AUTHORIZATIONS, DOCUMENT, Authorization, BundleSelector, format_time, normalise_versions, parse_time,
)
from ..installer.bundle import MANIFEST, SIGNATURES
from ..installer._fs import remove_tree
from ..installer.errors import HostError, UsageError
from ..installer.keys import signature_file_name
from .keys import SigningKey

_DURATION_RE = re.compile(r"(\d+)([dhm])")
_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}


def parse_expiry(text: str, *, now: datetime) -> datetime:
    """``30d``, ``12h``, ``90m`` from ``now``, or an absolute ``YYYY-MM-DDTHH:MM:SSZ``."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match:
        return now + int(match.group(1)) * _UNITS[match.group(2)]
    try:
        return parse_time(text)
    except ValueError:
        raise UsageError(f"expiry {text!r} is neither a duration such as 30d or 12h nor YYYY-MM-DDTHH:MM:SSZ",
                         subject=text) from None


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
    """A validated authorization; ``expires`` as for :func:`parse_expiry`. Refuse one that is
    already expired when it is made."""
    issued = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    until = parse_expiry(expires, now=issued)
    if until <= issued:
        raise UsageError(f"expiry {expires} is not in the future", subject=expires)
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


def write(auth: Authorization, *, keys: Sequence[SigningKey], out: Path) -> Written:
    """Sign ``auth`` with every key and write it as a directory: ``out`` itself (which must not
    exist), or, when ``out`` is a bundle directory, ``out/authorizations/<site>-<id>/``."""
    if not keys:
        raise UsageError("an authorization needs at least one --key")
    document = auth.to_bytes()
    digest = "sha256:" + hashlib.sha256(document).hexdigest()
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
        for key in keys:
            (staging / SIGNATURES / signature_file_name(key.public.keyid)).write_bytes(key.sign(document))
        os.chmod(staging, 0o755)
        os.rename(staging, target)
    except BaseException as e:
        remove_tree(staging)
        if isinstance(e, OSError):
            raise HostError(f"cannot write {target}: {e.strerror}", subject=str(target)) from None
        raise
    return Written(path=target, digest=digest, signers=tuple(sorted({k.public.keyid for k in keys})))
