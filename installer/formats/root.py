"""The trust root document, ``root.json``: a pure model (docs/trust.md, "root.json"). No I/O here.

A root file is a canonical-JSON envelope ``{"signatures": [...], "signed": {...}}``. The signatures
cover the canonical bytes of ``signed`` (which, because the whole file must be canonical, are exactly
the bytes between ``"signed":`` and the closing brace). ``signed`` names the keys a site trusts, the
roles each key may sign for with a threshold per role, an expiry, and optional floor resets.

:class:`Envelope` parses only the envelope; :class:`Root` interprets ``signed``. The caller
(:mod:`gapship.installer.trust`) checks signatures between the two, in the order python-tuf's TrustedMetadataSet uses.
Malformed roots raise :class:`~gapship.installer.errors.TrustError`: a root is trust metadata.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from packaging.version import InvalidVersion, Version

from .timestamps import parse_time
from ..errors import GapshipError, TrustError
from ..crypto.keys import ALGORITHMS, PublicKey, is_keyid
from ..kit import Fields, canonical_json, parse_json
from .manifest import check_name, check_version

ROOT_TYPE = "gapship-root"
ROOT_FORMAT_VERSION = 1
ROLE_ROOT, ROLE_RELEASE, ROLE_AUTHORIZE = "root", "release", "authorize"
ROLES = (ROLE_ROOT, ROLE_RELEASE, ROLE_AUTHORIZE)
REQUIRED_ROLES = (ROLE_ROOT, ROLE_RELEASE)
LEGACY_VERSION = 0  # the version of the root synthesised for a directory of *.pub files

# Hard caps, checked before (size) or while (counts) parsing.
MAX_ROOT_BYTES = 2 * 1024 * 1024
MAX_KEYS = 256
MAX_SIGNATURES = 64
MAX_FLOOR_RESETS = 256
MAX_KEY_NAME = 64


class TrustedKey(Protocol):
    """What a role member must do: Ed25519 and ML-DSA-87 public keys today; issue 8 adds sigstore
    identities with the same three members."""

    @property
    def algorithm(self) -> str: ...

    @property
    def keyid(self) -> str: ...

    def verify(self, message: bytes, signature: bytes, *, subject: str) -> None: ...

    def to_entry(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int
    require_algorithms: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"keyids": list(self.keyids), "threshold": self.threshold}
        if self.require_algorithms:
            out["require_algorithms"] = list(self.require_algorithms)
        return out


@dataclass(frozen=True)
class FloorReset:
    """Lower the anti-rollback floor of ``bundle`` from exactly ``from_version`` to ``to_version``
    (docs/trust.md, "Fast-forward recovery"). Matching the exact bad floor makes it one-shot."""

    bundle: str
    from_version: str
    to_version: str

    def to_dict(self) -> dict[str, str]:
        return {"bundle": self.bundle, "from": self.from_version, "to": self.to_version}


@dataclass(frozen=True)
class Root:
    version: int
    expires: str | None  # None only for the legacy root of a *.pub directory
    keys: Mapping[str, TrustedKey]
    roles: Mapping[str, Role]
    names: Mapping[str, str] = field(default_factory=dict)  # keyid -> human label (optional)
    floor_resets: tuple[FloorReset, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def legacy(self) -> bool:
        return self.version == LEGACY_VERSION

    def role(self, name: str) -> Role | None:
        return self.roles.get(name)

    def roles_of(self, keyid: str) -> tuple[str, ...]:
        return tuple(name for name in ROLES if name in self.roles and keyid in self.roles[name].keyids)

    def to_dict(self) -> dict[str, Any]:
        keys: dict[str, Any] = {}
        for keyid, key in self.keys.items():
            entry: dict[str, str] = dict(key.to_entry())
            if keyid in self.names:
                entry["name"] = self.names[keyid]
            keys[keyid] = entry
        out: dict[str, Any] = {
            "_type": ROOT_TYPE,
            "format_version": ROOT_FORMAT_VERSION,
            "version": self.version,
            "expires": self.expires,
            "keys": keys,
            "roles": {name: role.to_dict() for name, role in self.roles.items()},
        }
        if self.floor_resets:
            out["floor_resets"] = [r.to_dict() for r in self.floor_resets]
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, raw: object, *, where: str) -> Root:
        top = _obj(raw, where, required={"_type", "format_version", "version", "expires", "keys", "roles"},
                   optional={"floor_resets"})
        if top["_type"] != ROOT_TYPE:
            raise TrustError(f"{where}: _type {top['_type']!r} is not {ROOT_TYPE!r}", subject=where)
        if _int(top["format_version"], f"{where}: format_version") != ROOT_FORMAT_VERSION:
            raise TrustError(f"{where}: format_version {top['format_version']} is not supported "
                             f"(this gapship reads {ROOT_FORMAT_VERSION})", subject=where)
        keys, names = _keys(top["keys"], where)
        try:
            return cls(
                version=_int(top["version"], f"{where}: version"),
                expires=_str(top["expires"], f"{where}: expires"),
                keys=keys,
                roles=_roles(top["roles"], where),
                names=names,
                floor_resets=_floor_resets(top.get("floor_resets", []), where),
            )
        except TrustError:
            raise
        except GapshipError as e:  # a bad name or version inside a root is a bad root
            raise TrustError(f"{where}: {e.message}", subject=where) from None


@dataclass(frozen=True)
class Signature:
    """One entry of an envelope's ``signatures``: ``sig`` is base64 in the file, raw bytes here."""

    keyid: str
    algorithm: str
    sig: bytes

    def to_dict(self) -> dict[str, str]:
        return {"keyid": self.keyid, "algorithm": self.algorithm, "sig": base64.b64encode(self.sig).decode("ascii")}


@dataclass(frozen=True)
class Envelope:
    """A parsed but NOT yet trusted ``{"signed", "signatures"}`` document."""

    signed: Any
    signed_bytes: bytes
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        return canonical_json({"signed": self.signed, "signatures": [s.to_dict() for s in self.signatures]})

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str) -> Envelope:
        if len(data) > MAX_ROOT_BYTES:
            raise TrustError(f"{where} is {len(data)} bytes, over the {MAX_ROOT_BYTES}-byte cap", subject=where)
        raw = parse_json(data, source=where, error=TrustError,
                         number="root.json holds a non-integer number {text!r}", number_subject="root.json")
        top = _obj(raw, where, required={"signed", "signatures"})
        sigs = _list(top["signatures"], f"{where}: signatures", MAX_SIGNATURES)
        envelope = cls(signed=top["signed"], signed_bytes=canonical_json(top["signed"]),
                       signatures=tuple(_signature(s, f"{where}: signatures[{i}]") for i, s in enumerate(sigs)))
        # Canonical form closes every ambiguity: duplicate names, whitespace, number spellings.
        if envelope.to_bytes() != data:
            raise TrustError(f"{where} is not in canonical form (sorted keys, no whitespace, RFC 8785)", subject=where)
        return envelope


@dataclass(frozen=True)
class SignedRoot:
    """A root whose signatures were checked by :func:`gapship.installer.trust.update_root` (or, for the
    site's own anchor, against its own root keys)."""

    root: Root
    envelope: Envelope

    @property
    def version(self) -> int:
        return self.root.version

    def to_bytes(self) -> bytes:
        return self.envelope.to_bytes()


# -- parsing helpers (raise TrustError naming the field) -------------------------------------------


# The kit's readers in a root's words: "<where> must be a JSON object", unknown keys by name.
_FIELDS = Fields(TrustError, an_object="a JSON object")
_obj = _FIELDS.mapping
_list = _FIELDS.array
_str = _FIELDS.string
_int = _FIELDS.integer


def _signature(raw: object, where: str) -> Signature:
    obj = _obj(raw, where, required={"keyid", "algorithm", "sig"})
    try:
        sig = base64.b64decode(_str(obj["sig"], f"{where}.sig"), validate=True)
    except binascii.Error:
        raise TrustError(f"{where}.sig is not base64", subject=where) from None
    return Signature(keyid=_str(obj["keyid"], f"{where}.keyid"), algorithm=_str(obj["algorithm"], f"{where}.algorithm"),
                     sig=sig)


def _keys(raw: object, where: str) -> tuple[dict[str, TrustedKey], dict[str, str]]:
    if not isinstance(raw, dict):
        raise TrustError(f"{where}: keys must be an object", subject=where)
    if len(raw) > MAX_KEYS:
        raise TrustError(f"{where}: keys has {len(raw)} entries, over the cap of {MAX_KEYS}", subject=where)
    keys: dict[str, TrustedKey] = {}
    names: dict[str, str] = {}
    for keyid, entry in raw.items():
        at = f"{where}: keys[{keyid[:16]}]"
        keys[keyid] = parse_key_entry(keyid, entry, where=at)
        if isinstance(entry, dict) and "name" in entry:
            names[keyid] = _str(entry["name"], f"{at}.name")
    return keys, names


def parse_key_entry(keyid: str, raw: object, *, where: str) -> TrustedKey:
    """One ``keys`` entry. The key id must be the one derived from the key material (docs/trust.md),
    so one key can never be listed, and counted, under two ids."""
    obj = _obj(raw, where, required={"algorithm"}, optional={"public", "name"})
    algorithm = _str(obj["algorithm"], f"{where}.algorithm")
    if algorithm not in ALGORITHMS:
        raise TrustError(f"{where}: algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}", subject=where)
    if "public" not in obj:
        raise TrustError(f"{where} lacks public", subject=where)
    try:
        key = PublicKey.from_pem(_str(obj["public"], f"{where}.public").encode("ascii", "replace"), source=where)
    except GapshipError as e:
        raise TrustError(e.message, subject=where) from None
    if key.algorithm != algorithm:
        raise TrustError(f"{where}: public key is {key.algorithm}, not {algorithm}", subject=where)
    if key.keyid != keyid:
        raise TrustError(f"{where}: key id does not match the key (expected {key.keyid})", subject=where)
    return key


def _roles(raw: object, where: str) -> dict[str, Role]:
    obj = _obj(raw, f"{where}: roles", required=set(REQUIRED_ROLES), optional=set(ROLES) - set(REQUIRED_ROLES))
    out: dict[str, Role] = {}
    for name in ROLES:
        if name not in obj:
            continue
        at = f"{where}: roles.{name}"
        role = _obj(obj[name], at, required={"keyids", "threshold"}, optional={"require_algorithms"})
        keyids = tuple(_str(k, f"{at}.keyids") for k in _list(role["keyids"], f"{at}.keyids", MAX_KEYS))
        algos = tuple(_str(a, f"{at}.require_algorithms")
                      for a in _list(role.get("require_algorithms", []), f"{at}.require_algorithms", len(ALGORITHMS)))
        out[name] = Role(keyids=keyids, threshold=_int(role["threshold"], f"{at}.threshold"), require_algorithms=algos)
    return out


def _floor_resets(raw: object, where: str) -> tuple[FloorReset, ...]:
    items = _list(raw, f"{where}: floor_resets", MAX_FLOOR_RESETS)
    out = []
    for i, item in enumerate(items):
        at = f"{where}: floor_resets[{i}]"
        obj = _obj(item, at, required={"bundle", "from", "to"})
        out.append(FloorReset(_str(obj["bundle"], f"{at}.bundle"), _str(obj["from"], f"{at}.from"),
                              _str(obj["to"], f"{at}.to")))
    return tuple(out)


# -- rules (docs/trust.md, "Rules a verifier enforces") -------------------------------------------


def _validate(root: Root) -> None:
    where = f"root v{root.version}"
    if not root.legacy:
        if root.expires is None:
            raise TrustError(f"{where} has no expiry", subject="expires")
        parse_time(root.expires, what=f"{where} expires")
        for name in REQUIRED_ROLES:
            if name not in root.roles:
                raise TrustError(f"{where} has no {name} role", subject=name)
    for keyid in root.keys:
        if not is_keyid(keyid):
            raise TrustError(f"{where}: key id {keyid!r} is not 64 lower-case hex digits", subject=keyid)
    for keyid, label in root.names.items():
        if not 0 < len(label) <= MAX_KEY_NAME or not label.isprintable():
            raise TrustError(f"{where}: key name {label!r} must be 1..{MAX_KEY_NAME} printable characters", subject=keyid)
    for name, role in root.roles.items():
        _validate_role(root, name, role)
    _validate_floor_resets(root)


def _validate_role(root: Root, name: str, role: Role) -> None:
    where = f"root v{root.version} role {name}"
    if name not in ROLES:
        raise TrustError(f"{where} is not one of {', '.join(ROLES)}", subject=name)
    if len(set(role.keyids)) != len(role.keyids):
        raise TrustError(f"{where} lists a key twice", subject=name)
    for keyid in role.keyids:
        if keyid not in root.keys:
            raise TrustError(f"{where} names key {keyid[:16]}, which is not in keys", subject=name)
    if role.threshold < 1:
        raise TrustError(f"{where} has threshold {role.threshold}; it must be at least 1", subject=name)
    if len(set(role.require_algorithms)) != len(role.require_algorithms):
        raise TrustError(f"{where} lists a required algorithm twice", subject=name)
    for algorithm in role.require_algorithms:
        if algorithm not in ALGORITHMS:
            raise TrustError(f"{where} requires unknown algorithm {algorithm!r}", subject=name)
    # A role that can never reach its threshold would lock the site out: refuse it up front.
    groups: tuple[str | None, ...] = role.require_algorithms or (None,)
    for group in groups:
        count = sum(1 for k in role.keyids if group is None or root.keys[k].algorithm == group)
        # A legacy root is synthesised from *.pub files; with only sigstore pins it has no keys, and
        # the pins (not root keys) meet its release threshold (docs/sigstore.md).
        if count < role.threshold and not root.legacy:
            kind = f"{group} keys" if group else "keys"
            raise TrustError(f"{where} has threshold {role.threshold} but only {count} {kind}", subject=name)


def _validate_floor_resets(root: Root) -> None:
    seen: set[str] = set()
    for reset in root.floor_resets:
        where = f"root v{root.version} floor reset for {reset.bundle!r}"
        check_name(reset.bundle, "bundle name")
        check_version(reset.from_version)
        check_version(reset.to_version)
        if reset.bundle in seen:
            raise TrustError(f"{where} is listed twice", subject=reset.bundle)
        seen.add(reset.bundle)
        try:
            lower = Version(reset.to_version) < Version(reset.from_version)
        except InvalidVersion:  # pragma: no cover - check_version ran first
            lower = False
        if not lower:
            raise TrustError(f"{where} must lower the floor ({reset.to_version} is not below {reset.from_version})",
                             subject=reset.bundle)
