"""The one place that decides trust (docs/format.md, "Verification order"; docs/trust.md).

:func:`verify_manifest` takes the raw bytes of a bundle (manifest, signature files, and any new trust
roots it carries) and returns a :class:`VerifiedManifest` or raises. Its order is python-tuf's
TrustedMetadataSet's: for the roots, signatures then version (each new root needs a threshold of the
old root's root keys AND of its own, and exactly the next version), then the final root's expiry; for
the manifest, signatures and threshold, then parsing, then version (anti-rollback against the host's
floor), then time (a clock set back, then expiry). Nothing else in gapship reads an unverified manifest
field (the one exception, ``inspect``, says so in its name: :func:`parse_unverified`).

The same rules decide site authorizations (:func:`verify_authorization`, against the ``authorize``
role: :class:`AuthorizeKeys`).

Everything here returns nothing or raises; the host state and the trust directory are read and
written by :mod:`.host.state` and :mod:`.host.trustdir`, which decide nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import Version

from .crypto.sigstore import SigstoreSigner, check_sigstore_file, is_sigstore_signature_file, load_sigstore_signers
from .formats.root import (
    LEGACY_VERSION, ROLE_AUTHORIZE, ROLE_RELEASE, ROLE_ROOT, Envelope, Role, Root, SignedRoot, TrustedKey,
)
from .formats.timestamps import format_time, parse_time, utc_now
from .host.atomic import read_small
from .host.trustdir import (
    HISTORY_DIR, ROOT_FILE, check_trust_dir, parse_root_file_name, read_anchor, read_history,
    read_legacy_keys, root_file_name, write_root,
)
from .bundle.files import SIGNATURES, RawBundle
from .errors import PolicyError, TrustError
from .crypto.hashing import new_hasher
from .crypto.keys import MAX_KEY_FILE_BYTES, AlgorithmUnavailable, PublicKey, parse_signature_file_name
from .formats.manifest import Manifest
from .host.state import Installed, StateSnapshot

if TYPE_CHECKING:  # imported where used: only a site host reads authorizations
    from .formats.authorization import Authorization

MAX_TRUSTED_KEYS = 256
# How far the host clock may lag a signing time before it counts as set back. Expiry periods are days;
# this absorbs ordinary drift between the builder's and the site's clocks (docs/trust.md, "Time").
CLOCK_SKEW = timedelta(minutes=5)

PersistRoot = Callable[[SignedRoot], None]
SignatureInput = tuple[str, str | None, str | None, bytes]  # (label, keyid, algorithm, signature)


@dataclass(frozen=True)
class SignatureCheck:
    """What was found about one signature (reported by ``verify`` and ``inspect``)."""

    file: str
    keyid: str | None
    status: str  # valid | untrusted | invalid | unsupported | duplicate | unchecked (sigstore extra missing)
    detail: str = ""
    algorithm: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "keyid": self.keyid, "status": self.status, "detail": self.detail,
                "algorithm": self.algorithm}


@dataclass(frozen=True)
class Allowances:
    """Overrides an admin gave on the command line; each use is logged (docs/trust.md, "Anti-rollback")."""

    reinstall: bool = False
    downgrade: bool = False


@dataclass(frozen=True)
class TrustStore:
    """The keys a site accepts: its current trust root (``root.json``), or, in legacy mode, a root
    synthesised from a directory of ``*.pub`` files (every key may sign releases, threshold 1)."""

    root: Root
    source: str
    names: Mapping[str, str]  # key id -> a label for messages (file name or the root's key name)
    path: Path | None = None
    anchor: SignedRoot | None = None  # the current root document; None in legacy mode
    # Pinned sigstore signers (TRUSTDIR/sigstore/<name>.toml, docs/sigstore.md): each verified one
    # counts toward the release threshold once, like a key.
    sigstore: tuple[SigstoreSigner, ...] = ()

    @property
    def legacy(self) -> bool:
        return self.root.legacy

    @property
    def keys(self) -> Mapping[str, TrustedKey]:
        return self.root.keys

    @property
    def threshold(self) -> int:
        role = self.root.role(ROLE_RELEASE)
        return role.threshold if role else 1

    @classmethod
    def from_dir(cls, path: Path) -> TrustStore:
        check_trust_dir(path)
        sigstore = load_sigstore_signers(path)
        data = read_anchor(path)
        if data is None:
            return _with_sigstore(_legacy_store(path, keys_required=not sigstore), sigstore)
        store = _with_sigstore(_anchored_store(path, data), sigstore)
        # Catch up on history written after root.json (a crash between the two writes of write_root).
        later = {root_file_name(v): d for v, d in read_history(path).items() if v > store.root.version}
        store, _ = apply_root_chain(store, later, where=HISTORY_DIR)
        return store

    def with_root(self, signed: SignedRoot) -> TrustStore:
        names = {**_root_names(signed.root), **{s.signer_id: s.description for s in self.sigstore}}
        return replace(self, root=signed.root, anchor=signed, names=names)

    def persist(self, signed: SignedRoot) -> None:
        """Write an accepted root into this trust directory (history, then root.json, atomically)."""
        if self.path is None:
            raise TrustError("this trust store has no directory to write to", subject=self.source)
        write_root(self.path, signed.version, signed.to_bytes())


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose bytes were signed by enough trusted keys and that passed the host's version
    and time rules. Only :func:`verify_manifest` makes one."""

    manifest: Manifest
    manifest_bytes: bytes
    digest: str  # "<algorithm>:<hex>" of manifest_bytes, with the manifest's own algorithm
    signers: tuple[str, ...]  # key ids of the valid trusted signatures, sorted
    checks: tuple[SignatureCheck, ...]
    signature_files: dict[str, bytes]  # the raw signature files, kept with the install
    trust: TrustStore | None = None  # the trust after any root update this bundle carried
    root_updates: tuple[int, ...] = ()  # root versions accepted from the bundle's roots/
    overrides: tuple[str, ...] = ()  # "reinstall" / "downgrade" when an Allowance was needed
    allow: Allowances = field(default_factory=Allowances)

    @property
    def root(self) -> Root | None:
        return self.trust.root if self.trust else None

    @property
    def root_version(self) -> int | None:
        root = self.root
        return None if root is None or root.legacy else root.version


# -- the decision ----------------------------------------------------------------------------------


def verify_manifest(raw: RawBundle, *, trust: TrustStore, state: StateSnapshot | None = None,
                    now: datetime | None = None, allow: Allowances = Allowances(),
                    persist_root: PersistRoot | None = None) -> VerifiedManifest:
    """Roots, then manifest signatures, then parsing, then version, then time: return or raise.

    ``state`` (the host's floors and newest accepted time) is None for a stateless ``verify``, which then
    checks expiry and the bundle's own signing time only. ``persist_root`` is called with each new root
    as soon as it is verified, as python-tuf does, so a revocation sticks even if the bundle is refused.
    """
    when = now or utc_now()
    trust, updates = apply_root_chain(trust, raw.roots, persist=persist_root)
    check_root_expiry(trust.root, now=when)
    checks = check_signatures(raw.manifest_bytes, raw.signatures, trust)
    signers = require_threshold(trust.root, ROLE_RELEASE, checks, what=f"the bundle (trust {trust.source})")
    manifest = Manifest.from_bytes(raw.manifest_bytes)
    overrides: tuple[str, ...] = ()
    if state is not None:
        floor, _ = effective_floor(manifest.name, state.floor(manifest.name), trust.root)
        overrides = check_floor(manifest, floor=floor, allow=allow)
    check_clock(manifest, newest=state.newest_accepted if state else None, now=when)
    check_expiry(manifest, now=when)
    return VerifiedManifest(
        manifest=manifest,
        manifest_bytes=raw.manifest_bytes,
        digest=manifest_digest(raw.manifest_bytes, manifest.hash_algorithm),
        signers=signers,
        checks=checks,
        signature_files=dict(raw.signatures),
        trust=trust,
        root_updates=updates,
        overrides=overrides,
        allow=allow,
    )


# -- signatures and thresholds ---------------------------------------------------------------------


def check_signatures(manifest_bytes: bytes, signatures: Mapping[str, bytes], trust: TrustStore) -> tuple[SignatureCheck, ...]:
    """Check every signature file of a bundle against the release role; each key is counted once."""
    items: list[SignatureInput] = []
    sigstore_checks: list[SignatureCheck] = []
    for name, sig in sorted(signatures.items()):
        if is_sigstore_signature_file(name):  # a pinned sigstore signer counts once, as "sigstore:<name>"
            found = check_sigstore_file(name, sig, manifest_bytes, trust.sigstore)
            sigstore_checks.append(SignatureCheck(name, found.signer, found.status, found.detail, "sigstore"))
            continue
        parsed = parse_signature_file_name(name)
        items.append((name, parsed[0], parsed[1], sig) if parsed else (name, None, None, sig))
    return check_role_signatures(trust.root, ROLE_RELEASE, manifest_bytes, items) + tuple(sigstore_checks)


def envelope_items(envelope: Envelope, *, where: str) -> list[SignatureInput]:
    return [(f"{where} signatures[{i}]", s.keyid, s.algorithm, s.sig) for i, s in enumerate(envelope.signatures)]


def check_role_signatures(root: Root, role_name: str, message: bytes,
                          items: Iterable[SignatureInput]) -> tuple[SignatureCheck, ...]:
    """One :class:`SignatureCheck` per signature. Any signed document (manifest, root, and the site
    authorizations of docs/trust.md's ``authorize`` role) goes through here."""
    role = root.role(role_name) or Role(keyids=(), threshold=1)
    counted: set[str] = set()
    return tuple(_check_one(root, role_name, role, message, item, counted) for item in items)


def _check_one(root: Root, role_name: str, role: Role, message: bytes, item: SignatureInput,
               counted: set[str]) -> SignatureCheck:
    label, keyid, algorithm, sig = item
    if keyid is None or algorithm is None:
        return SignatureCheck(label, None, "unsupported", "not a <keyid>.<algorithm>.sig file")
    key = root.keys.get(keyid)
    if key is None:
        where = "the trust store" if root.legacy else f"trust root v{root.version}"
        return SignatureCheck(label, keyid, "untrusted", f"key not in {where}", algorithm)
    if keyid not in role.keyids:
        return SignatureCheck(label, keyid, "untrusted", f"key is not in the {role_name} role", algorithm)
    if key.algorithm != algorithm:
        return SignatureCheck(label, keyid, "invalid", f"signature says {algorithm}, the key is {key.algorithm}", algorithm)
    if keyid in counted:
        return SignatureCheck(label, keyid, "duplicate", "this key was already counted once", algorithm)
    try:
        key.verify(message, sig, subject=label)
    except AlgorithmUnavailable as e:
        return SignatureCheck(label, keyid, "unsupported", e.message, algorithm)
    except TrustError as e:
        return SignatureCheck(label, keyid, "invalid", e.message, algorithm)
    counted.add(keyid)
    return SignatureCheck(label, keyid, "valid", "", algorithm)


def require_threshold(root: Root, role_name: str, checks: tuple[SignatureCheck, ...], *, what: str) -> tuple[str, ...]:
    """The distinct valid signers, or raise when the role's threshold is not met. With
    ``require_algorithms`` (hybrid signing) the threshold must be met in EACH listed algorithm."""
    role = root.role(role_name)
    if role is None:
        raise TrustError(f"trust root v{root.version} has no {role_name} role", subject=role_name)
    valid = sorted({c.keyid for c in checks if c.status == "valid" and c.keyid})
    groups: tuple[str | None, ...] = role.require_algorithms or (None,)
    for algorithm in groups:
        have = [k for k in valid if algorithm is None or _algorithm_of(root, k) == algorithm]
        if len(have) < role.threshold:
            raise TrustError(_threshold_message(what, role_name, role, algorithm, len(have), checks), subject="signatures")
    return tuple(valid)


def _algorithm_of(root: Root, signer: str) -> str:
    """A key's algorithm; signers that are not root keys are pinned sigstore identities."""
    key = root.keys.get(signer)
    return key.algorithm if key is not None else "sigstore"


def _threshold_message(what: str, role_name: str, role: Role, algorithm: str | None, have: int,
                       checks: tuple[SignatureCheck, ...]) -> str:
    if not checks:
        return f"{what} carries no signature"
    found = "; ".join(f"{c.file}: {c.status}" + (f" ({c.detail})" if c.detail else "") for c in checks)
    kind = f"{algorithm} " if algorithm else ""
    if role.threshold == 1 and not algorithm:
        return f"no valid signature on {what} from a {role_name} key (found {found})"
    return (f"{what} needs {role.threshold} valid {kind}signatures from distinct {role_name} keys, "
            f"found {have} (found {found})")


# -- roots: rotation and revocation ----------------------------------------------------------------


def update_root(trusted: Root, data: bytes, *, where: str) -> SignedRoot:
    """Accept ``data`` as the next root after ``trusted``, or raise (TUF spec 5.3.4-5.3.5): signed by a
    threshold of the trusted root's root keys, then by a threshold of its own, then exactly one
    version up. Keys the new root leaves out stop counting as soon as it is returned."""
    if trusted.legacy:
        raise TrustError("a legacy trust directory (only *.pub files) cannot accept a new root; "
                         "run `gapship trust init` to make it a root", subject=where)
    envelope = Envelope.from_bytes(data, where=where)
    items = envelope_items(envelope, where=where)
    old = check_role_signatures(trusted, ROLE_ROOT, envelope.signed_bytes, items)
    require_threshold(trusted, ROLE_ROOT, old, what=f"{where} (by the root keys of trusted v{trusted.version})")
    new = Root.from_dict(envelope.signed, where=where)
    own = check_role_signatures(new, ROLE_ROOT, envelope.signed_bytes, items)
    require_threshold(new, ROLE_ROOT, own, what=f"{where} (by its own root keys)")
    if new.version != trusted.version + 1:
        raise TrustError(f"{where} is root version {new.version}, but the next after v{trusted.version} must be "
                         f"v{trusted.version + 1} (root versions go up by exactly one)", subject=where)
    return SignedRoot(new, envelope)


def apply_root_chain(trust: TrustStore, files: Mapping[str, bytes], *, persist: PersistRoot | None = None,
                     where: str = "roots") -> tuple[TrustStore, tuple[int, ...]]:
    """Walk ``<N>.root.json`` files from the trusted version up. Versions at or below it are skipped
    (the site has them); a gap is a version skip and is refused. A legacy store ignores the chain: it
    has no root keys to check it with (docs/trust.md, "Legacy mode")."""
    if not files or trust.legacy:
        return trust, ()
    by_version: dict[int, tuple[str, bytes]] = {}
    for name, data in files.items():
        version = parse_root_file_name(name)
        if version is None:
            raise TrustError(f"{where}/{name} is not a <version>.root.json file", subject=f"{where}/{name}")
        by_version[version] = (name, data)
    accepted: list[int] = []
    for version in sorted(by_version):
        if version <= trust.root.version:
            continue
        name, data = by_version[version]
        if version != trust.root.version + 1:
            raise TrustError(f"root version skip: {where}/{name} follows trusted v{trust.root.version} but "
                             f"{where}/{root_file_name(trust.root.version + 1)} is missing", subject=f"{where}/{name}")
        signed = update_root(trust.root, data, where=f"{where}/{name}")
        if persist is not None:
            persist(signed)
        trust = trust.with_root(signed)
        accepted.append(signed.version)
    return trust, tuple(accepted)


def check_root_expiry(root: Root, *, now: datetime) -> None:
    if root.expires is not None and now >= parse_time(root.expires, what="root expires"):
        raise PolicyError(f"trust root v{root.version} expired at {root.expires} (host clock {format_time(now)}); "
                          f"bring a newer root (`gapship trust update`, or a bundle carrying roots/)",
                          subject=ROOT_FILE)


# -- version: anti-rollback and its one reset ------------------------------------------------------


def effective_floor(name: str, recorded: str | None, root: Root | None) -> tuple[str | None, str | None]:
    """``(floor, replaced)``: the floor to enforce, after a root-signed reset whose ``from`` is exactly
    the recorded floor (docs/trust.md, "Fast-forward recovery"); ``replaced`` is the floor it lowered."""
    if recorded is None or root is None:
        return recorded, None
    for reset in root.floor_resets:
        if reset.bundle == name and Version(reset.from_version) == Version(recorded):
            return reset.to_version, recorded
    return recorded, None


def check_floor(manifest: Manifest, *, floor: str | None, allow: Allowances) -> tuple[str, ...]:
    """Refuse a version at or below the floor unless allowed; return the overrides that were needed."""
    if floor is None or Version(manifest.version) > Version(floor):
        return ()
    what = f"{manifest.name} {manifest.version}"
    if Version(manifest.version) == Version(floor):
        if allow.reinstall:
            return ("reinstall",)
        raise PolicyError(f"{what} is already the highest version installed here; refusing to install it again "
                          f"(anti-rollback); pass --allow-reinstall to do it anyway", subject=what)
    if allow.downgrade:
        return ("downgrade",)
    raise PolicyError(f"rollback refused: {what} is older than {floor}, the highest version installed here; "
                      f"pass --allow-downgrade to do it anyway", subject=what)


def recheck_floor(verified: VerifiedManifest, state: StateSnapshot) -> tuple[str, ...]:
    """The same floor rule, again under the install lock with a fresh state (closes the window between
    :func:`verify_manifest` and the install)."""
    m = verified.manifest
    floor, _ = effective_floor(m.name, state.floor(m.name), verified.root)
    return check_floor(m, floor=floor, allow=verified.allow)


def installed_record(verified: VerifiedManifest, state: StateSnapshot, *, overrides: tuple[str, ...], at: datetime,
                     by: str) -> Installed:
    """What to record after an install: the floor only ever goes up (a downgrade keeps it), except
    through a root-signed reset."""
    m = verified.manifest
    floor, replaced = effective_floor(m.name, state.floor(m.name), verified.root)
    new_floor = m.version if floor is None or Version(m.version) > Version(floor) else floor
    return Installed(name=m.name, version=m.version, floor=new_floor, manifest_digest=verified.digest,
                     created=m.created, at=format_time(at), by=by, overrides=overrides, floor_reset=replaced)


# -- time: a clock set back, then expiry -----------------------------------------------------------


def check_clock(manifest: Manifest, *, newest: str | None, now: datetime) -> None:
    """Refuse when the host clock is earlier than a signing time it has accepted, or than this bundle's:
    an expiry check is only as good as the clock it reads (TUF spec, "freeze attack")."""
    if newest is not None and now + CLOCK_SKEW < parse_time(newest, what="newest accepted time"):
        raise PolicyError(f"host clock {format_time(now)} is earlier than {newest}, the newest signing time this "
                          f"host has accepted: the clock was set back; correct it first", subject="clock")
    if now + CLOCK_SKEW < parse_time(manifest.created, what="created"):
        raise PolicyError(f"{manifest.name} {manifest.version} was signed at {manifest.created}, later than the host "
                          f"clock {format_time(now)}: the clock is behind or was set back; correct it first",
                          subject="clock")


def check_expiry(manifest: Manifest, *, now: datetime) -> None:
    if manifest.expires is not None and now >= parse_time(manifest.expires, what="expires"):
        raise PolicyError(f"{manifest.name} {manifest.version} expired at {manifest.expires} (host clock "
                          f"{format_time(now)}); ask for a fresh bundle", subject="expires")


# -- helpers -------------------------------------------------------------------------------------


def manifest_digest(data: bytes, algorithm: str) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"


def parse_unverified(raw: RawBundle) -> Manifest:
    """Parse a manifest WITHOUT checking any signature: for ``inspect`` only, which says so."""
    return Manifest.from_bytes(raw.manifest_bytes)


def load_root_file(data: bytes, *, where: str) -> SignedRoot:
    """A root document checked against its own root keys only: how a site's anchor is loaded, and
    how ``gapship trust`` checks what it is about to write. It proves consistency, not trust."""
    envelope = Envelope.from_bytes(data, where=where)
    root = Root.from_dict(envelope.signed, where=where)
    checks = check_role_signatures(root, ROLE_ROOT, envelope.signed_bytes, envelope_items(envelope, where=where))
    require_threshold(root, ROLE_ROOT, checks, what=f"{where} (by its own root keys)")
    return SignedRoot(root, envelope)


def _anchored_store(path: Path, data: bytes) -> TrustStore:
    signed = load_root_file(data, where=f"{path / ROOT_FILE}")
    return TrustStore(root=signed.root, source=str(path), names=_root_names(signed.root), path=path, anchor=signed)


def _with_sigstore(store: TrustStore, sigstore: tuple[SigstoreSigner, ...]) -> TrustStore:
    if not sigstore:
        return store
    names = {**store.names, **{s.signer_id: s.description for s in sigstore}}
    return replace(store, sigstore=sigstore, names=names)


def _legacy_store(path: Path, *, keys_required: bool = True) -> TrustStore:
    keys: dict[str, TrustedKey] = {}
    names: dict[str, str] = {}
    for name, data in read_legacy_keys(path, required=keys_required):
        key = PublicKey.from_pem(data, source=str(path / name))
        keys[key.keyid] = key
        names[key.keyid] = name
    role = Role(keyids=tuple(keys), threshold=1)
    root = Root(version=LEGACY_VERSION, expires=None, keys=keys, roles={ROLE_RELEASE: role})
    return TrustStore(root=root, source=str(path), names=names, path=path)


def _root_names(root: Root) -> dict[str, str]:
    return {keyid: root.names.get(keyid, "/".join(root.roles_of(keyid)) or "key") for keyid in root.keys}


# -- site authorizations: the authorize role (docs/safeguards.md, "Site authorizations") --------------

AUTHORIZE_ROLE_DIR = "authorize"  # legacy trust directory: TRUSTDIR/authorize/*.pub
MAX_AUTHORIZE_KEYS = 256


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
    # Every *.pub is read as the trust directory's other files are (read_legacy_keys): a FIFO, device
    # or directory under that name is refused, not skipped, and the kit never blocks on one.
    pubs = sorted(p for p in folder.iterdir() if p.name.endswith(".pub"))
    if len(pubs) > MAX_AUTHORIZE_KEYS:
        raise TrustError(f"{folder} holds over {MAX_AUTHORIZE_KEYS} keys", subject=str(folder))
    keys = {}
    for pub in pubs:
        data = read_small(pub, MAX_KEY_FILE_BYTES, what="key file")
        if data is not None:
            key = PublicKey.from_pem(data, source=str(pub))
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
    from .formats.authorization import MAX_DOCUMENT_BYTES, Authorization

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
