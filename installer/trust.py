"""The one place that decides trust (docs/format.md, "Verification order"; docs/trust.md).

:func:`verify_manifest` takes the raw bytes of a bundle (manifest, signature files, and any new trust
roots it carries) and returns a :class:`VerifiedManifest` or raises. Its order is python-tuf's
TrustedMetadataSet's: for the roots, signatures then version (each new root needs a threshold of the
old root's root keys AND of its own, and exactly the next version), then the final root's expiry; for
the manifest, signatures and threshold, then parsing, then version (anti-rollback against the host's
floor), then time (a clock set back, then expiry). Nothing else in gapship reads an unverified manifest
field (the one exception, ``inspect``, says so in its name: :func:`parse_unverified`).

Every signed document goes through ONE decision, :func:`verify_role`: the manifest (``release``
role), each new trust root (``root`` role, of the old root and of its own) and each site
authorization (``authorize`` role, :func:`verify_authorization`). It applies the same rules to all
of them, in one order: the root keeps the release and authorize roles on different keys
(:func:`check_roles_apart`), each signature is by a key of the role with the key's own algorithm,
each key counts once, and the role's threshold is met in each of its ``require_algorithms``. Nothing
else decides whether a document is signed; :func:`check_role_signatures` only reports.

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
from .host.trustdir import (
    HISTORY_DIR, ROOT_FILE, check_trust_dir, parse_root_file_name, read_anchor, read_history,
    read_legacy_keys, root_file_name, write_root,
)
from .bundle.files import RawBundle
from .errors import PolicyError, TrustError, UnsafeContentError
from .crypto.hashing import new_hasher
from .crypto.keys import AlgorithmUnavailable, PublicKey, parse_signature_file_name
from .formats.manifest import Manifest
from .host.state import Installed, StateSnapshot

if TYPE_CHECKING:  # imported where used: only a site host reads authorizations, only parity needs its layout
    from .formats.authorization import Authorization
    from .formats.parity import ParityLayout

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
    verdict = verify_release(raw.manifest_bytes, raw.signatures, trust)
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
        signers=verdict.signers,
        checks=verdict.checks,
        signature_files=dict(raw.signatures),
        trust=trust,
        root_updates=updates,
        overrides=overrides,
        allow=allow,
    )


# -- signatures and thresholds ---------------------------------------------------------------------


def check_signatures(manifest_bytes: bytes, signatures: Mapping[str, bytes], trust: TrustStore) -> tuple[SignatureCheck, ...]:
    """Report on every signature file of a bundle against the release role (``inspect --trust``); each
    key is counted once. This decides nothing: :func:`verify_release` does."""
    items, sigstore = _release_inputs(manifest_bytes, signatures, trust)
    return check_role_signatures(trust.root, ROLE_RELEASE, manifest_bytes, items) + sigstore


def verify_release(manifest_bytes: bytes, signatures: Mapping[str, bytes], trust: TrustStore, *,
                   what: str = "the bundle", subject: str = "signatures") -> RoleVerdict:
    """The release role's decision over a bundle's signature files (pinned sigstore signers included),
    or over the parity layout's (``what``: "the parity layout", :func:`verify_parity`)."""
    items, sigstore = _release_inputs(manifest_bytes, signatures, trust)
    return verify_role(trust.root, ROLE_RELEASE, manifest_bytes, items, what=f"{what} (trust {trust.source})",
                       sigstore=sigstore, subject=subject)


def _release_inputs(manifest_bytes: bytes, signatures: Mapping[str, bytes],
                    trust: TrustStore) -> tuple[list[SignatureInput], tuple[SignatureCheck, ...]]:
    """The key signatures as :data:`SignatureInput`, and each ``*.sigstore.json`` file checked against
    the pinned signers (a pinned signer counts once, as ``sigstore:<name>``, for the release role only)."""
    items: list[SignatureInput] = []
    sigstore_checks: list[SignatureCheck] = []
    for name, sig in sorted(signatures.items()):
        if is_sigstore_signature_file(name):
            found = check_sigstore_file(name, sig, manifest_bytes, trust.sigstore)
            sigstore_checks.append(SignatureCheck(name, found.signer, found.status, found.detail, "sigstore"))
            continue
        items.append(signature_file_input(name, sig))
    return items, tuple(sigstore_checks)


def signature_file_input(name: str, sig: bytes) -> SignatureInput:
    """A ``signatures/<keyid>.<algorithm>.sig`` file (of a bundle or an authorization) as a
    :data:`SignatureInput`; any other name is reported ``unsupported`` and counts for nothing."""
    parsed = parse_signature_file_name(name)
    return (name, parsed[0], parsed[1], sig) if parsed else (name, None, None, sig)


def envelope_items(envelope: Envelope, *, where: str) -> list[SignatureInput]:
    return [(f"{where} signatures[{i}]", s.keyid, s.algorithm, s.sig) for i, s in enumerate(envelope.signatures)]


@dataclass(frozen=True)
class RoleVerdict:
    """What :func:`verify_role` found: every signature's check, and the distinct valid signers."""

    checks: tuple[SignatureCheck, ...]
    signers: tuple[str, ...]


def verify_role(root: Root, role_name: str, message: bytes, items: Iterable[SignatureInput], *, what: str,
                sigstore: tuple[SignatureCheck, ...] = (), subject: str = "signatures") -> RoleVerdict:
    """THE decision whether ``message`` is signed for ``role_name`` under ``root``; return or raise
    :class:`TrustError`. Every signed document kind calls it (docs/trust.md, "One decision"):

    1. a root that decides for the release or the authorize role keeps them on different keys
       (:func:`check_roles_apart`): one stolen key must never both sign a bundle and authorize a site;
    2. each signature is by a key of this role, with that key's own algorithm, and verifies; each key
       counts once, whatever number of files or envelope entries claim it;
    3. the role's threshold is met by distinct keys, in EACH of its ``require_algorithms``.

    ``sigstore``: checks of pinned sigstore signers, for the release role only (docs/sigstore.md).
    ``subject``: what a refusal names in the ``--json`` error object."""
    if sigstore and role_name != ROLE_RELEASE:
        raise ValueError("sigstore signers count for the release role only")
    if role_name in SEPARATE_ROLES:
        check_roles_apart(root, where=f"cannot check {what}: {root_label(root)}")
    checks = check_role_signatures(root, role_name, message, items) + sigstore
    return RoleVerdict(checks=checks, signers=_require_threshold(root, role_name, checks, what=what, subject=subject))


# No key may hold two of these roles (docs/trust.md, "root.json"; docs/safeguards.md: "never a release key").
SEPARATE_ROLES = (ROLE_RELEASE, ROLE_AUTHORIZE)


def check_roles_apart(root: Root, *, where: str) -> None:
    """Raise :class:`TrustError` when one key holds two of :data:`SEPARATE_ROLES`. Called by
    :func:`verify_role` for every release or authorize decision, by :func:`update_root` for every
    root a site accepts, and by the connected side before it signs a root."""
    for i, first in enumerate(SEPARATE_ROLES):
        for second in SEPARATE_ROLES[i + 1:]:
            a, b = root.role(first), root.role(second)
            both = sorted(set(a.keyids) & set(b.keyids)) if a and b else []
            if both:
                name = root.names.get(both[0])
                label = both[0][:16] + (f" ({name})" if name else "")
                raise TrustError(f"{where}: key {label} is both a {first} key and an {second} key; the two roles "
                                 f"must use different keys, so that one stolen key cannot sign a bundle and "
                                 f"authorize a site", subject=both[0])


def root_label(root: Root) -> str:
    """How messages name a root: "trust root vN", or the legacy trust directory."""
    return "the legacy trust directory" if root.legacy else f"trust root v{root.version}"


def check_role_signatures(root: Root, role_name: str, message: bytes,
                          items: Iterable[SignatureInput]) -> tuple[SignatureCheck, ...]:
    """One :class:`SignatureCheck` per signature, for reports (``verify --json``, ``inspect --trust``);
    each key is counted once. It decides nothing: :func:`verify_role` does."""
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


def _require_threshold(root: Root, role_name: str, checks: tuple[SignatureCheck, ...], *, what: str,
                       subject: str) -> tuple[str, ...]:
    """The distinct valid signers, or raise when the role's threshold is not met. With
    ``require_algorithms`` (hybrid signing) the threshold must be met in EACH listed algorithm.
    Private: only :func:`verify_role` calls it, after the rules that come first."""
    role = root.role(role_name)
    if role is None:
        where = f" (no {AUTHORIZE_ROLE_DIR}/ folder of *.pub keys)" if root.legacy and role_name == ROLE_AUTHORIZE else ""
        raise TrustError(f"cannot check {what}: {root_label(root)} has no {role_name} role{where}", subject=role_name)
    valid = sorted({c.keyid for c in checks if c.status == "valid" and c.keyid})
    groups: tuple[str | None, ...] = role.require_algorithms or (None,)
    for algorithm in groups:
        have = [k for k in valid if algorithm is None or _algorithm_of(root, k) == algorithm]
        if len(have) < role.threshold:
            raise TrustError(_threshold_message(what, role_name, role, algorithm, len(have), checks), subject=subject)
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
        article = "an" if role_name[0] in "aeiou" else "a"
        return f"no valid signature on {what} from {article} {role_name} key (found {found})"
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
    verify_role(trusted, ROLE_ROOT, envelope.signed_bytes, items,
                what=f"{where} (by the root keys of trusted v{trusted.version})")
    new = Root.from_dict(envelope.signed, where=where)
    verify_role(new, ROLE_ROOT, envelope.signed_bytes, items, what=f"{where} (by its own root keys)")
    if new.version != trusted.version + 1:
        raise TrustError(f"{where} is root version {new.version}, but the next after v{trusted.version} must be "
                         f"v{trusted.version + 1} (root versions go up by exactly one)", subject=where)
    # A site never accepts a root that gives one key two roles. (A root it accepted before this rule
    # still signs its successor, but decides nothing for release or authorize: see verify_role.)
    check_roles_apart(new, where=f"{where} (root v{new.version})")
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


def recheck_floor(verified: VerifiedManifest, state: StateSnapshot, *, kept: str | None = None,
                  resuming: bool = False) -> tuple[str, ...]:
    """The same floor rule, again under the install lock with a fresh state (closes the window between
    :func:`verify_manifest` and the install), against the higher of the state's floor and ``kept``: the
    highest version whose signed manifest the prefix still holds (:func:`kept_version`), so deleting or
    editing the state file re-opens no rollback (docs/trust.md, "Anti-rollback").

    ``resuming``: the state's entry for this bundle was written by this very install (its receipt), which
    was stopped before ``current`` switched; its own floor does not count against finishing it."""
    m = verified.manifest
    floor, _ = prefix_floor(m.name, state, kept=kept, root=verified.root)
    if resuming and floor is not None and Version(floor) == Version(m.version):
        floor = None
    return check_floor(m, floor=floor, allow=verified.allow)


def prefix_floor(name: str, state: StateSnapshot, *, kept: str | None, root: Root | None) -> tuple[str | None, str | None]:
    """``(floor, replaced)``: the state's floor after any root-signed reset (:func:`effective_floor`),
    raised to ``kept`` when the prefix holds a verified manifest of a higher version."""
    floor, replaced = effective_floor(name, state.floor(name), root)
    if kept is not None and (floor is None or Version(kept) > Version(floor)):
        floor = kept
    return floor, replaced


def kept_version(raw: RawBundle, *, trust: TrustStore, name: str) -> str:
    """The version of the manifest an installed version directory keeps (``manifest.json`` and
    ``signatures/``, docs/format.md "Install layout"), once its signatures meet the release role's
    threshold under ``trust``; raise otherwise. Expiry is not checked: an expired version still counts
    toward the floor. Planted or damaged copies raise and count for nothing."""
    verify_release(raw.manifest_bytes, raw.signatures, trust)  # the one release decision (verify_role)
    manifest = Manifest.from_bytes(raw.manifest_bytes)
    if manifest.name != name:
        raise TrustError(f"{raw.root}: the kept manifest is of {manifest.name!r}, not {name!r}", subject=str(raw.root))
    return manifest.version


def counts_for_floor(name: str, version: str, root: Root | None) -> bool:
    """False for a version at or above the ``from`` of a floor reset the root carries for ``name``:
    the root has disowned that floor, so a directory of such a version left in the prefix must not
    bring it back (docs/trust.md, "Fast-forward recovery")."""
    if root is None:
        return True
    return not any(r.bundle == name and Version(version) >= Version(r.from_version) for r in root.floor_resets)


def installed_record(verified: VerifiedManifest, state: StateSnapshot, *, overrides: tuple[str, ...], at: datetime,
                     by: str, kept: str | None = None, receipt: str | None = None,
                     audit: tuple[Mapping[str, object], ...] = ()) -> Installed:
    """What to record after an install: the floor only ever goes up (a downgrade keeps it), except
    through a root-signed reset; a floor lost from the state but held by the prefix (``kept``) is
    recorded again."""
    m = verified.manifest
    floor, replaced = prefix_floor(m.name, state, kept=kept, root=verified.root)
    new_floor = m.version if floor is None or Version(m.version) > Version(floor) else floor
    return Installed(name=m.name, version=m.version, floor=new_floor, manifest_digest=verified.digest,
                     created=m.created, at=format_time(at), by=by, overrides=overrides, floor_reset=replaced,
                     receipt=receipt, audit=audit)


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
    verify_role(root, ROLE_ROOT, envelope.signed_bytes, envelope_items(envelope, where=where),
                what=f"{where} (by its own root keys)")
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
    """Legacy mode: every ``*.pub`` is a release key, every ``authorize/*.pub`` an authorize key, each
    role threshold 1. A key in both is kept in both roles, so that :func:`verify_role` refuses it,
    as it refuses such a root."""
    keys: dict[str, TrustedKey] = {}
    names: dict[str, str] = {}
    roles = {ROLE_RELEASE: Role(keyids=_legacy_keys(path, "", keys, names, required=keys_required), threshold=1)}
    folder = path / AUTHORIZE_ROLE_DIR
    if folder.is_dir():
        roles[ROLE_AUTHORIZE] = Role(keyids=_legacy_keys(folder, f"{AUTHORIZE_ROLE_DIR}/", keys, names), threshold=1)
    root = Root(version=LEGACY_VERSION, expires=None, keys=keys, roles=roles)
    return TrustStore(root=root, source=str(path), names=names, path=path)


def store_of_keys(keys: Iterable[PublicKey], *, source: str) -> TrustStore:
    """A legacy-form store in which each of ``keys`` may sign releases (threshold 1): how ``build
    --base`` checks a base bundle against the public halves of its own signing keys (docs/cli.md)."""
    found = {k.keyid: k for k in keys}
    roles = {ROLE_RELEASE: Role(keyids=tuple(found), threshold=1)}
    root = Root(version=LEGACY_VERSION, expires=None, keys=found, roles=roles)
    return TrustStore(root=root, source=source, names={k: k[:16] for k in found})


def _legacy_keys(folder: Path, prefix: str, keys: dict[str, TrustedKey], names: dict[str, str], *,
                 required: bool = False) -> tuple[str, ...]:
    ids: list[str] = []
    for name, data in read_legacy_keys(folder, required=required):
        key = PublicKey.from_pem(data, source=str(folder / name))
        keys[key.keyid] = key
        names.setdefault(key.keyid, prefix + name)
        ids.append(key.keyid)
    return tuple(dict.fromkeys(ids))


def _root_names(root: Root) -> dict[str, str]:
    return {keyid: root.names.get(keyid, "/".join(root.roles_of(keyid)) or "key") for keyid in root.keys}


# -- site authorizations: the authorize role (docs/safeguards.md, "Site authorizations") --------------

AUTHORIZE_ROLE_DIR = "authorize"  # legacy trust directory: TRUSTDIR/authorize/*.pub


@dataclass(frozen=True)
class AuthorizeKeys:
    """Who may sign site authorizations: the ``authorize`` role of a trust root (in legacy mode, of
    the root synthesised from ``TRUSTDIR/*.pub`` and ``TRUSTDIR/authorize/*.pub``). A view for
    messages and reports; the decision is :func:`verify_role`'s, over the whole root, so that the
    role's algorithms and the separation from the release role apply."""

    root: Root
    source: str

    @property
    def keys(self) -> Mapping[str, TrustedKey]:
        role = self.root.role(ROLE_AUTHORIZE)
        return {k: self.root.keys[k] for k in role.keyids} if role else {}

    @property
    def threshold(self) -> int:
        role = self.root.role(ROLE_AUTHORIZE)
        return role.threshold if role else 1

    @classmethod
    def from_root(cls, root: Root, *, source: str) -> AuthorizeKeys:
        """The trust root's ``authorize`` role (docs/trust.md); no such role means no key may authorize."""
        return cls(root=root, source=source)

    @classmethod
    def from_trust(cls, trust: TrustStore) -> AuthorizeKeys:
        """The authorize role of a trust store (after any rotation a bundle carried, so revocations apply)."""
        return cls(root=trust.root, source=trust.source)


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
    """Signatures first (:func:`verify_role` for the authorize role), then parsing; return or raise."""
    from .formats.authorization import MAX_DOCUMENT_BYTES, Authorization

    if len(document) > MAX_DOCUMENT_BYTES:
        raise TrustError(f"{source}: authorization over {MAX_DOCUMENT_BYTES} bytes", subject=source)
    items = [signature_file_input(name, sig) for name, sig in sorted(signatures.items())]
    verdict = verify_role(keys.root, ROLE_AUTHORIZE, document, items,
                          what=f"authorization {source} (trust {keys.source})", subject=source)
    return VerifiedAuthorization(
        authorization=Authorization.from_bytes(document, source=source), document=document,
        digest="sha256:" + hashlib.sha256(document).hexdigest(), signers=verdict.signers,
        signature_files=dict(signatures), source=source,
    )


# -- the parity layout: the release role again (docs/format.md, section 12) ---------------------------


@dataclass(frozen=True)
class VerifiedParity:
    """A parity layout whose exact bytes the release role signed and that binds this very manifest.
    Only :func:`verify_parity` makes one."""

    layout: ParityLayout
    layout_bytes: bytes
    signers: tuple[str, ...]
    checks: tuple[SignatureCheck, ...]
    signature_files: dict[str, bytes]


def verify_parity(layout_bytes: bytes, signatures: Mapping[str, bytes], verified: VerifiedManifest) -> VerifiedParity:
    """Signatures first (:func:`verify_release`, under the trust that accepted the manifest, exit 4),
    then parsing (exit 6), then the binding: a layout for another manifest is refused (exit 4), and one
    whose chunk size, count or hash disagrees with the manifest it names does not add up (exit 6)."""
    from .formats.parity import LAYOUT, PARITY, ParityLayout

    where = f"{PARITY}/{LAYOUT}"
    if verified.trust is None:
        raise TrustError(f"cannot check {where}: no trust store", subject=where)
    verdict = verify_release(layout_bytes, signatures, verified.trust, what=f"the parity layout {where}",
                             subject=f"{PARITY}/signatures")
    layout = ParityLayout.from_bytes(layout_bytes)
    m = verified.manifest
    if layout.manifest_digest != verified.digest or (layout.name, layout.version) != (m.name, m.version):
        raise TrustError(f"{where} is for {layout.name} {layout.version} ({layout.manifest_digest}), not this "
                         f"bundle's manifest {m.name} {m.version} ({verified.digest})", subject=where)
    if (layout.hash_algorithm, layout.chunk_size, layout.chunks) != (m.hash_algorithm, m.chunk_size, len(m.chunks)):
        raise UnsafeContentError(f"{where} does not add up: it says {layout.chunks} chunks of {layout.chunk_size} "
                                 f"bytes ({layout.hash_algorithm}); the manifest has {len(m.chunks)} of "
                                 f"{m.chunk_size} ({m.hash_algorithm})", subject=where)
    return VerifiedParity(layout=layout, layout_bytes=layout_bytes, signers=verdict.signers, checks=verdict.checks,
                          signature_files=dict(signatures))
