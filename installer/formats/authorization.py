"""Site authorizations (docs/safeguards.md, "Site authorizations"): model, reading and verification.

An authorization is a directory holding ``authorization.json`` (canonical JSON, like the manifest)
and ``signatures/<keyid>.ed25519.sig`` files: detached Ed25519 signatures over the exact document
bytes, made by keys that hold the *authorize* role. It names one site, one bundle (by manifest digest,
or by name and a PEP 440 version range), an expiry and extra safeguards the site must have.

The trust seam is :func:`verify_authorization`: a pure function of the document bytes, its signature
files and an :class:`AuthorizeKeys` view (key id -> public key, and a threshold). Where that view comes
from is decided elsewhere: today :meth:`AuthorizeKeys.from_legacy_dir` reads ``TRUSTDIR/authorize/*.pub``
(the legacy trust directory); with a trust root it is the root's ``authorize`` role. Release keys are
never in the view, so an authorization signed by a release key is refused as untrusted (wrong role).

A manifest signature can never pass as an authorization signature or the reverse: the two documents
carry different ``format`` fields and each parser refuses the other's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from ..bundle.files import MAX_SIGNATURE_BYTES, MAX_SIGNATURE_FILES, SIGNATURES, read_capped
from ..errors import PolicyError, TrustError, UsageError
from ..crypto.hashing import HASH_ALGORITHMS, digest_hex_length
from .root import ROLE_AUTHORIZE, Root, TrustedKey
from ..crypto.keys import MAX_KEY_FILE_BYTES, PublicKey, parse_signature_file_name
from .manifest import _TIME_RE, canonical_json
from .policy import _CONTROL_RE, _ID_RE

if TYPE_CHECKING:
    # Imported where used: packaging.specifiers costs ~15 ms at start (packaging.utils, packaging.tags),
    # and only an authorization that names a version range needs it.
    from packaging.specifiers import SpecifierSet

FORMAT_NAME = "gapship-authorization"
FORMAT_VERSION = 1
DOCUMENT = "authorization.json"
AUTHORIZATIONS = "authorizations"  # the folder inside a bundle directory that may carry some
AUTHORIZE_ROLE_DIR = "authorize"  # legacy trust directory: TRUSTDIR/authorize/*.pub
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_AUTHORIZATIONS = 64
MAX_AUTHORIZE_KEYS = 256
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class BundleSelector:
    """Exactly one of: ``manifest_digest``; or ``name`` with ``versions`` (a PEP 440 specifier set in
    normalised form, e.g. ``<2,>=1``)."""

    manifest_digest: str | None = None
    name: str | None = None
    versions: str | None = None

    def __post_init__(self) -> None:
        by_digest = self.manifest_digest is not None
        by_name = self.name is not None or self.versions is not None
        if by_digest == by_name:
            raise ValueError("name the bundle by manifest_digest, or by name and versions, not both or neither")
        if by_digest:
            _check_digest(self.manifest_digest or "")
        else:
            _check_name_range(self.name, self.versions)

    def matches(self, *, name: str, version: str, manifest_digest: str) -> bool:
        if self.manifest_digest is not None:
            return self.manifest_digest == manifest_digest
        from packaging.specifiers import SpecifierSet

        return name == self.name and _in_range(Version(version), SpecifierSet(self.versions or ""))

    def describe(self) -> str:
        if self.manifest_digest is not None:
            return f"manifest {self.manifest_digest}"
        return f"{self.name} {self.versions}"

    def to_dict(self) -> dict[str, str]:
        if self.manifest_digest is not None:
            return {"manifest_digest": self.manifest_digest}
        return {"name": self.name or "", "versions": self.versions or ""}


def _in_range(version: Version, spec: SpecifierSet) -> bool:
    """PEP 440: a pre-release is in a range only when the range itself names a pre-release. Said
    explicitly because the default of ``SpecifierSet.contains`` changed between packaging releases."""
    named = False
    for item in spec:
        try:
            named = named or Version(item.version).is_prerelease
        except InvalidVersion:  # a wildcard such as ==1.*
            continue
    return spec.contains(version, prereleases=named)


def normalise_versions(text: str) -> str:
    """``'>=1, <2'`` -> ``'<2,>=1'``; raise ValueError for anything that is not a bounded PEP 440 range."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        spec = SpecifierSet(text)
    except InvalidSpecifier:
        raise ValueError(f"versions {text!r} is not a PEP 440 specifier set such as '>=1,<2'") from None
    if not len(spec):
        raise ValueError("versions must not be empty (say '>=0' to mean every version, if you must)")
    return str(spec)


def _check_digest(value: str) -> None:
    algorithm, _, hexdigest = value.partition(":")
    if (algorithm not in HASH_ALGORITHMS or len(hexdigest) != digest_hex_length(algorithm)
            or hexdigest.strip("0123456789abcdef")):
        raise ValueError(f"manifest_digest {value!r} must be '<sha256|sha384|sha512>:<lower-case hex>'")


def _check_name_range(name: str | None, versions: str | None) -> None:
    if name is None or versions is None:
        raise ValueError("a bundle named by name also needs a versions range, and the reverse")
    if not _ID_RE.fullmatch(name):
        raise ValueError(f"bundle name {name!r} must match {_ID_RE.pattern}")
    if normalise_versions(versions) != versions:
        raise ValueError(f"versions {versions!r} is not in normalised form (write {normalise_versions(versions)!r})")


@dataclass(frozen=True)
class Authorization:
    """The document. Construct it through :meth:`create` or :meth:`from_bytes`; both validate."""

    site: str
    bundle: BundleSelector
    issued: str
    expires: str
    require_safeguards: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _ID_RE.fullmatch(self.site):
            raise ValueError(f"site {self.site!r} must match {_ID_RE.pattern}")
        for stamp, what in ((self.issued, "issued"), (self.expires, "expires")):
            if not _TIME_RE.fullmatch(stamp):
                raise ValueError(f"{what} {stamp!r} is not YYYY-MM-DDTHH:MM:SSZ")
        if parse_time(self.expires) <= parse_time(self.issued):
            raise ValueError(f"expires {self.expires} is not after issued {self.issued}")
        for control in self.require_safeguards:
            if not _CONTROL_RE.fullmatch(control):
                raise ValueError(f"require_safeguards: {control!r} must match {_CONTROL_RE.pattern}")
        if list(self.require_safeguards) != sorted(set(self.require_safeguards)):
            raise ValueError("require_safeguards must be sorted and free of duplicates")

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.expires)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "site": self.site,
            "bundle": self.bundle.to_dict(),
            "issued": self.issued,
            "expires": self.expires,
            "require_safeguards": list(self.require_safeguards),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str) -> Authorization:
        """Parse signed document bytes; refuse anything not canonical or not well-formed (exit 5:
        the vendor signed something this gapship cannot honour)."""
        try:
            raw = json.loads(data.decode("utf-8"), parse_float=_no_float, parse_constant=_no_float)
            doc = cls._from_dict(raw)
        except (UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
            raise PolicyError(f"{source}: not a valid authorization: {e}", subject=source) from None
        if doc.to_bytes() != data:
            raise PolicyError(f"{source}: authorization is not canonical JSON (sorted keys, no whitespace)",
                              subject=source)
        return doc

    @classmethod
    def _from_dict(cls, raw: object) -> Authorization:
        if not isinstance(raw, dict):
            raise ValueError("the document must be a JSON object")
        expected = {"format", "format_version", "site", "bundle", "issued", "expires", "require_safeguards"}
        if raw.keys() != expected:
            raise ValueError(f"fields must be exactly {', '.join(sorted(expected))}")
        if raw["format"] != FORMAT_NAME or raw["format_version"] != FORMAT_VERSION:
            raise ValueError(f"format must be {FORMAT_NAME!r} version {FORMAT_VERSION}")
        bundle = raw["bundle"]
        if not isinstance(bundle, dict) or not bundle.keys() <= {"manifest_digest", "name", "versions"}:
            raise ValueError("bundle must be {manifest_digest} or {name, versions}")
        extras = raw["require_safeguards"]
        if not isinstance(extras, list):
            raise ValueError("require_safeguards must be a list")
        return cls(site=_s(raw["site"]), bundle=BundleSelector(**{k: _s(v) for k, v in bundle.items()}),
                   issued=_s(raw["issued"]), expires=_s(raw["expires"]),
                   require_safeguards=tuple(_s(v) for v in extras))


def _s(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _no_float(text: str) -> object:
    raise ValueError(f"non-integer number {text!r}")


@dataclass(frozen=True)
class AuthorizeKeys:
    """The keys that may sign site authorizations, and how many distinct ones must."""

    keys: Mapping[str, TrustedKey]
    threshold: int
    source: str

    @classmethod
    def from_root(cls, root: Root, *, source: str) -> AuthorizeKeys:
        """The trust root's ``authorize`` role (docs/trust.md); no such role means no key may authorize."""
        role = root.role(ROLE_AUTHORIZE)
        if role is None:
            return cls(keys={}, threshold=1, source=f"{source} (trust root v{root.version} has no authorize role)")
        keys = {k: root.keys[k] for k in role.keyids}
        return cls(keys=keys, threshold=role.threshold, source=f"{source} (trust root v{root.version}, authorize role)")

    @classmethod
    def from_legacy_dir(cls, trust_dir: Path) -> AuthorizeKeys:
        """Legacy mode: ``TRUSTDIR/authorize/*.pub``, any one of which suffices. A key that is also a
        release key (``TRUSTDIR/*.pub``) is refused: the roles must be held by different keys."""
        folder = trust_dir / AUTHORIZE_ROLE_DIR
        keys = _read_pubs(folder) if folder.is_dir() else {}
        release = _read_pubs(trust_dir) if trust_dir.is_dir() else {}
        both = sorted(keys.keys() & release.keys())
        if both:
            raise TrustError(f"key {both[0][:16]} is both a release key and an authorize key in {trust_dir}; "
                             "the two roles must use different keys", subject=str(folder))
        return cls(keys=keys, threshold=1, source=str(folder))


def _read_pubs(folder: Path) -> dict[str, PublicKey]:
    pubs = sorted(p for p in folder.iterdir() if p.name.endswith(".pub") and p.is_file())
    if len(pubs) > MAX_AUTHORIZE_KEYS:
        raise TrustError(f"{folder} holds over {MAX_AUTHORIZE_KEYS} keys", subject=str(folder))
    keys = {}
    for pub in pubs:
        key = PublicKey.from_pem(read_capped(pub, MAX_KEY_FILE_BYTES, missing=TrustError), source=str(pub))
        keys[key.keyid] = key
    return keys


@dataclass(frozen=True)
class VerifiedAuthorization:
    """An authorization whose exact bytes were signed by enough authorize keys. Only
    :func:`verify_authorization` makes one; whether it applies here is :meth:`check_applies`."""

    authorization: Authorization
    document: bytes
    digest: str  # "sha256:<hex>" of the document: the authorization's id
    signers: tuple[str, ...]
    signature_files: Mapping[str, bytes]
    source: str

    def check_applies(self, *, site_id: str, name: str, version: str, manifest_digest: str,
                      now: datetime) -> None:
        """Raise :class:`PolicyError` unless this authorization is for this site and bundle and unexpired."""
        auth = self.authorization
        if auth.site != site_id:
            raise PolicyError(f"authorization {self.source} is for site {auth.site!r}, not this site {site_id!r}",
                              subject=self.source)
        if not auth.bundle.matches(name=name, version=version, manifest_digest=manifest_digest):
            raise PolicyError(f"authorization {self.source} is for {auth.bundle.describe()}, not {name} {version} "
                              f"({manifest_digest})", subject=self.source)
        if now >= auth.expires_at:
            raise PolicyError(f"authorization {self.source} expired at {auth.expires}", subject=self.source)

    def to_dict(self) -> dict[str, object]:
        auth = self.authorization
        return {"id": self.digest, "site": auth.site, "bundle": auth.bundle.to_dict(), "issued": auth.issued,
                "expires": auth.expires, "require_safeguards": list(auth.require_safeguards),
                "signers": list(self.signers)}


def verify_authorization(document: bytes, signatures: Mapping[str, bytes], *, keys: AuthorizeKeys,
                         source: str) -> VerifiedAuthorization:
    """Signatures first (each authorize key counted once), then parsing; return or raise TrustError."""
    if len(document) > MAX_DOCUMENT_BYTES:
        raise TrustError(f"{source}: authorization over {MAX_DOCUMENT_BYTES} bytes", subject=source)
    signers: set[str] = set()
    found: list[str] = []
    for name, sig in sorted(signatures.items()):
        parsed = parse_signature_file_name(name)
        keyid = parsed[0] if parsed else None
        key = keys.keys.get(keyid) if keyid else None
        if key is not None and parsed is not None and key.algorithm != parsed[1]:
            found.append(f"{name[:16]}: signature says {parsed[1]}, the key is {key.algorithm}")
            continue
        if key is None:
            found.append(f"{name[:16]}: not an authorize key" if keyid else f"{name}: not a signature file")
            continue
        try:
            key.verify(document, sig, subject=f"{source}/{SIGNATURES}/{name}")
        except TrustError:
            found.append(f"{key.keyid[:16]}: invalid")
            continue
        signers.add(key.keyid)
    if len(signers) < max(keys.threshold, 1):
        detail = "; ".join(found) if found else "no signatures"
        raise TrustError(f"authorization {source} lacks {max(keys.threshold, 1)} valid signature(s) from "
                         f"authorize keys in {keys.source} ({detail})", subject=source)
    return VerifiedAuthorization(
        authorization=Authorization.from_bytes(document, source=source), document=document,
        digest="sha256:" + hashlib.sha256(document).hexdigest(), signers=tuple(sorted(signers)),
        signature_files=dict(signatures), source=source,
    )


# -- reading authorization directories (bounded; nothing here is trusted) ---------------------------


@dataclass(frozen=True)
class RawAuthorization:
    source: str
    document: bytes
    signatures: Mapping[str, bytes]
    explicit: bool  # named with --authorization (must apply) rather than carried in the bundle


def read_authorization(path: Path, *, explicit: bool) -> RawAuthorization:
    """Read an authorization directory (or its ``authorization.json``), with caps."""
    folder = path.parent if path.name == DOCUMENT and path.is_file() else path
    if not folder.is_dir():
        raise UsageError(f"authorization {str(path)!r} is not a directory holding {DOCUMENT}", subject=str(path))
    document = read_capped(folder / DOCUMENT, MAX_DOCUMENT_BYTES, missing=TrustError)
    sigdir = folder / SIGNATURES
    names = sorted(os.listdir(sigdir)) if sigdir.is_dir() else []
    if len(names) > MAX_SIGNATURE_FILES:
        raise TrustError(f"{sigdir} holds over {MAX_SIGNATURE_FILES} files", subject=str(sigdir))
    signatures = {n: read_capped(sigdir / n, MAX_SIGNATURE_BYTES, missing=TrustError) for n in names}
    return RawAuthorization(source=str(folder), document=document, signatures=signatures, explicit=explicit)


def carried_authorizations(bundle: Path) -> list[RawAuthorization]:
    """The authorizations a bundle directory carries under ``authorizations/*/`` (none is fine)."""
    folder = bundle / AUTHORIZATIONS
    if not folder.is_dir() or folder.is_symlink():
        return []
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if len(entries) > MAX_AUTHORIZATIONS:
        raise TrustError(f"{folder} holds over {MAX_AUTHORIZATIONS} entries", subject=str(folder))
    return [read_authorization(p, explicit=False) for p in entries if p.is_dir() and not p.is_symlink()]
