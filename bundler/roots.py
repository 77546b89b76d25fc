"""Making and signing trust roots on the connected side (docs/trust.md, "Managing a trust root").

Every new version is checked with the installer's own :func:`~gapship.installer.trust.update_root`
(and version 1 with :func:`~gapship.installer.trust.load_root_file`) before it is written, and every
root is made through :func:`make_root`, which applies the installer's role rules, so the authority
never writes a root that a site would refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from ..installer.host.atomic import atomic_write
from ..installer.formats.root import (
    REQUIRED_ROLES, ROLE_AUTHORIZE, ROLE_ROOT, ROLES, Envelope, FloorReset, Role, Root, Signature, SignedRoot,
    TrustedKey,
)
from ..installer.formats.timestamps import format_time
from ..installer.host.trustdir import HISTORY_DIR, ROOT_FILE, read_history, root_file_name, write_root
from ..installer.bundle.files import ROOTS
from ..installer.errors import GapshipError, HostError, TrustError, UsageError
from ..installer.crypto.keys import PublicKey
from ..installer.trust import TrustStore, check_roles_apart, load_root_file, update_root
from ..installer.kit import parse_json
from .keys import SigningKey, load_public_key

RootChange = Callable[[Root], Root]
OPTIONAL_ROLES = tuple(r for r in ROLES if r not in REQUIRED_ROLES)  # authorize


def sign_root(root: Root, keys: Sequence[SigningKey]) -> SignedRoot:
    """An envelope with one signature per key over the canonical bytes of ``root``, sorted by key id."""
    signed_bytes = root.to_bytes()
    signatures = sorted((Signature(k.public.keyid, k.algorithm, k.sign(signed_bytes)) for k in keys),
                        key=lambda s: (s.keyid, s.algorithm))
    signed = parse_json(signed_bytes, source=f"root v{root.version}", error=TrustError)  # our own bytes
    return SignedRoot(root, Envelope(signed=signed, signed_bytes=signed_bytes,
                                     signatures=tuple(signatures)))


def make_root(*, version: int, expires: str, keys: Mapping[str, TrustedKey], roles: Mapping[str, Role],
              names: Mapping[str, str], floor_resets: tuple[FloorReset, ...] = ()) -> Root:
    """A :class:`Root`, with the model's objections and the installer's role rules (one key never holds
    the release and the authorize role: :func:`~gapship.installer.trust.check_roles_apart`) turned
    into usage errors (the user asked for it). Every command that writes a root makes it here."""
    try:
        root = Root(version=version, expires=expires, keys=keys, roles=roles, names=names, floor_resets=floor_resets)
        check_roles_apart(root, where=f"root v{version}")
    except GapshipError as e:
        raise UsageError(f"that trust root would be invalid: {e.message}", subject=e.subject) from None
    return root


def init_trust(trust_dir: Path, *, members: Mapping[str, Sequence[PublicKey]], thresholds: Mapping[str, int],
               require: Mapping[str, tuple[str, ...]], names: Mapping[str, str], expires: datetime,
               sign_with: Sequence[SigningKey]) -> SignedRoot:
    """Write version 1 of a new trust root into ``trust_dir`` (which must not hold one yet)."""
    if (trust_dir / ROOT_FILE).exists() or (trust_dir / HISTORY_DIR).exists():
        raise UsageError(f"{trust_dir} already holds a trust root; use add-key, remove-key or set-role",
                         subject=str(trust_dir))
    keys: dict[str, TrustedKey] = {}
    roles: dict[str, Role] = {}
    for role in ROLES:
        if role not in members:
            continue
        for key in members[role]:
            keys[key.keyid] = key
        roles[role] = Role(keyids=tuple(dict.fromkeys(k.keyid for k in members[role])),
                           threshold=thresholds.get(role, 1), require_algorithms=require.get(role, ()))
    root = make_root(version=1, expires=format_time(expires), keys=keys, roles=roles,
                     names={k: v for k, v in names.items() if k in keys})
    _check_signers(sign_with, [root])
    signed = sign_root(root, sign_with)
    try:
        load_root_file(signed.to_bytes(), where="the new root")
    except TrustError as e:
        raise UsageError(f"{e.message}; give --sign-with for enough root keys", subject="--sign-with") from None
    _mkdir(trust_dir)
    write_root(trust_dir, 1, signed.to_bytes())
    return signed


def next_version(trust_dir: Path, change: RootChange, *, expires: datetime,
                 sign_with: Sequence[SigningKey]) -> tuple[SignedRoot, Root]:
    """Write version N+1 of the root in ``trust_dir``: ``change`` applied to version N, with a new expiry,
    signed by ``sign_with``, which must hold a threshold of N's root keys and of N+1's."""
    store = TrustStore.from_dir(trust_dir)
    if store.legacy:
        raise UsageError(f"{trust_dir} is a legacy trust directory (only *.pub files); run `gapship trust init` first",
                         subject=str(trust_dir))
    old = store.root
    try:
        new = change(old)
    except UsageError:
        raise
    except GapshipError as e:  # the model refused the change (dataclasses.replace re-validates)
        raise UsageError(f"that trust root would be invalid: {e.message}", subject=e.subject) from None
    new = make_root(version=old.version + 1, expires=format_time(expires), keys=new.keys, roles=new.roles,
                    names=new.names, floor_resets=new.floor_resets)
    _check_signers(sign_with, [old, new])
    signed = sign_root(new, sign_with)
    try:
        update_root(old, signed.to_bytes(), where=f"root v{new.version}")
    except TrustError as e:
        raise UsageError(f"{e.message}; give --sign-with for enough root keys of v{old.version} and "
                         f"v{new.version}", subject="--sign-with") from None
    write_root(trust_dir, new.version, signed.to_bytes())
    return signed, old


def add_key(key: PublicKey, *, role: str, name: str | None, threshold: int | None) -> RootChange:
    def change(root: Root) -> Root:
        current = _role(root, role, create=True)
        if key.keyid in current.keyids:
            raise UsageError(f"key {key.keyid[:16]} is already in the {role} role", subject=key.keyid)
        keys = {**root.keys, key.keyid: key}
        names = {**root.names, **({key.keyid: name} if name else {})}
        updated = replace(current, keyids=(*current.keyids, key.keyid),
                          threshold=threshold if threshold is not None else current.threshold)
        return replace(root, keys=keys, names=names, roles={**root.roles, role: updated})

    return change


def remove_key(keyid: str, *, role: str | None, threshold: int | None) -> RootChange:
    """Take ``keyid`` out of ``role`` (or of every role): a revocation, effective at the new version.
    Taking the last key out of the optional ``authorize`` role removes the role (no key may authorize
    then); this is also how a root that gave one key the release and the authorize role is repaired
    (remove it from ``authorize``, then ``add-key`` a separate authorize key)."""

    def change(root: Root) -> Root:
        roles = dict(root.roles)
        targets = [role] if role else [r for r in ROLES if r in roles and keyid in roles[r].keyids]
        for name in targets:
            current = _role(root, name, create=False)
            if keyid not in current.keyids:
                raise UsageError(f"key {keyid[:16]} is not in the {name} role", subject=keyid)
            kept = tuple(k for k in current.keyids if k != keyid)
            if not kept and name in OPTIONAL_ROLES:  # its last key: no key may sign for it any more
                del roles[name]
                continue
            roles[name] = replace(current, keyids=kept,
                                  threshold=threshold if threshold is not None else current.threshold)
        if not targets:
            raise UsageError(f"key {keyid[:16]} is in no role", subject=keyid)
        return _drop_unused(replace(root, roles=roles))

    return change


def set_role(role: str, *, threshold: int | None, require: tuple[str, ...] | None) -> RootChange:
    def change(root: Root) -> Root:
        current = _role(root, role, create=False)
        updated = replace(current, threshold=threshold if threshold is not None else current.threshold,
                          require_algorithms=require if require is not None else current.require_algorithms)
        return replace(root, roles={**root.roles, role: updated})

    return change


def floor_reset(bundle: str, *, from_version: str | None, to_version: str | None) -> RootChange:
    """Add (or, with both versions None, clear) the floor reset for ``bundle``. Resets stay in later
    versions until cleared: a site may skip versions, and only its final root's resets apply."""

    def change(root: Root) -> Root:
        kept = tuple(r for r in root.floor_resets if r.bundle != bundle)
        if from_version is None or to_version is None:
            if len(kept) == len(root.floor_resets):
                raise UsageError(f"the root has no floor reset for {bundle!r}", subject=bundle)
            return replace(root, floor_resets=kept)
        return replace(root, floor_resets=(*kept, FloorReset(bundle, from_version, to_version)))

    return change


def renew() -> RootChange:
    return lambda root: root


def attach_roots(bundle: Path, trust_dir: Path, *, since: int) -> list[str]:
    """Copy ``roots/<N>.root.json`` for every N above ``since`` from the trust directory's history into
    ``bundle/roots/``. They sit outside the manifest, so the bundle's signatures are unaffected."""
    if not (bundle / "manifest.json").is_file():
        raise UsageError(f"{bundle} is not a bundle directory (no manifest.json)", subject=str(bundle))
    store = TrustStore.from_dir(trust_dir)
    if store.legacy:
        raise UsageError(f"{trust_dir} is a legacy trust directory: it has no roots to attach", subject=str(trust_dir))
    history = read_history(trust_dir)
    wanted = [v for v in sorted(history) if since < v <= store.root.version]
    if not wanted:
        raise UsageError(f"{trust_dir} has no root above v{since} to attach", subject=str(trust_dir))
    folder = bundle / ROOTS
    _mkdir(folder)
    for version in wanted:
        atomic_write(folder / root_file_name(version), history[version])
    return [root_file_name(v) for v in wanted]


def find_key(root: Root, ref: str) -> str:
    """A key id from a key id, a key name in the root, or a ``.pub`` file."""
    if ref in root.keys:
        return ref
    by_name = [k for k, n in root.names.items() if n == ref]
    if len(by_name) == 1:
        return by_name[0]
    path = Path(ref)
    if path.is_file():
        return load_public_key(path, source=ref).keyid
    raise UsageError(f"{ref!r} is not a key id, key name or .pub file of this root", subject=ref)


def _role(root: Root, name: str, *, create: bool) -> Role:
    current = root.role(name)
    if current is not None:
        return current
    if create and name == ROLE_AUTHORIZE:
        return Role(keyids=(), threshold=1)
    raise UsageError(f"the root has no {name} role", subject=name)


def _drop_unused(root: Root) -> Root:
    used = {k for role in root.roles.values() for k in role.keyids}
    return replace(root, keys={k: v for k, v in root.keys.items() if k in used},
                   names={k: v for k, v in root.names.items() if k in used})


def _check_signers(sign_with: Sequence[SigningKey], roots: Sequence[Root]) -> None:
    """Refuse a signature that would not count: it would only look like approval."""
    if not sign_with:
        raise UsageError("give at least one --sign-with root key", subject="--sign-with")
    allowed = {k for root in roots for k in (root.role(ROLE_ROOT) or Role((), 1)).keyids}
    seen: set[str] = set()
    for key in sign_with:
        keyid = key.public.keyid
        if keyid not in allowed:
            raise UsageError(f"--sign-with key {keyid[:16]} is not a root key of this trust root", subject=keyid)
        if keyid in seen:
            raise UsageError(f"--sign-with key {keyid[:16]} is given twice", subject=keyid)
        seen.add(keyid)


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HostError(f"cannot create {path}: {e.strerror}", subject=str(path)) from None

