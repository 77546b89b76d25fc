"""The site authorization document, ``authorization.json`` (docs/safeguards.md, "Site authorizations"):
a pure model. No I/O here; its signatures are checked in :mod:`gapship.installer.trust`
(:func:`~gapship.installer.trust.verify_authorization`) and authorization directories are read by
:mod:`gapship.installer.safeguards`.

An authorization is a directory holding ``authorization.json`` (canonical JSON, like the manifest)
and ``signatures/<keyid>.ed25519.sig`` files: detached Ed25519 signatures over the exact document
bytes, made by keys that hold the *authorize* role. It names one site, one bundle (by manifest digest,
or by name and a PEP 440 version range), an expiry and extra safeguards the site must have.

The trust seam is :func:`~gapship.installer.trust.verify_authorization`: a pure function of the
document bytes, its signature files and an :class:`~gapship.installer.trust.AuthorizeKeys` view (key
id -> public key, and a threshold): the trust root's ``authorize`` role, or in legacy mode
``TRUSTDIR/authorize/*.pub``. Release keys are never in the view, so an authorization signed by a
release key is refused as untrusted (wrong role).

A manifest signature can never pass as an authorization signature or the reverse: the two documents
carry different ``format`` fields and each parser refuses the other's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from ..errors import PolicyError
from ..crypto.hashing import HASH_ALGORITHMS, digest_hex_length
from ..kit import Fields, Malformed, canonical_json, parse_json
from .policy import CONTROL_RE, ID_RE
from .timestamps import TIME_FORMAT, TIME_RE

if TYPE_CHECKING:
    # Imported where used: packaging.specifiers costs ~15 ms at start (packaging.utils, packaging.tags),
    # and only an authorization that names a version range needs it.
    from packaging.specifiers import SpecifierSet

FORMAT_NAME = "gapship-authorization"
FORMAT_VERSION = 1
DOCUMENT = "authorization.json"
AUTHORIZATIONS = "authorizations"  # the folder inside a bundle directory that may carry some
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_AUTHORIZATIONS = 64

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
    if not ID_RE.fullmatch(name):
        raise ValueError(f"bundle name {name!r} must match {ID_RE.pattern}")
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
        if not ID_RE.fullmatch(self.site):
            raise ValueError(f"site {self.site!r} must match {ID_RE.pattern}")
        for stamp, what in ((self.issued, "issued"), (self.expires, "expires")):
            if not TIME_RE.fullmatch(stamp):
                raise ValueError(f"{what} {stamp!r} is not YYYY-MM-DDTHH:MM:SSZ")
        if parse_time(self.expires) <= parse_time(self.issued):
            raise ValueError(f"expires {self.expires} is not after issued {self.issued}")
        for control in self.require_safeguards:
            if not CONTROL_RE.fullmatch(control):
                raise ValueError(f"require_safeguards: {control!r} must match {CONTROL_RE.pattern}")
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
        raw = parse_json(data, source=source, error=PolicyError, invalid="{source}: not a valid authorization: {detail}",
                         number="{source}: not a valid authorization: non-integer number {text!r}")
        try:
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


# An authorization's fields are named by their value ("1 is not a string"), the words it always used;
# from_bytes reports the ValueError as "not a valid authorization: ...".
_FIELDS = Fields(Malformed, must="is not")


def _s(value: object) -> str:
    return _FIELDS.string(value, repr(value))
