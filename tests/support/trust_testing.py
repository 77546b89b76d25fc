"""Helpers for the trust tests: roots, bundles at a chosen time, and verification with a chosen clock.

Every key is generated in tmp_path by the tests (conftest's make_key); nothing here holds key material.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gapship.bundler.build import build
from gapship.bundler.keys import SigningKey
from gapship.bundler.roots import RootChange, init_trust, next_version
from gapship.bundler.spec import load_spec
from gapship.installer.formats.root import ROLE_RELEASE, ROLE_ROOT, SignedRoot
from gapship.installer.bundle.files import read_raw_bundle
from gapship.installer.deploy.install import InstallResult, install
from gapship.installer.host.state import HostState
from gapship.installer.trust import Allowances, TrustStore, VerifiedManifest, verify_manifest
from gapship_testing import KeyPair

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def init_root(trust_dir: Path, *, root: Sequence[KeyPair], release: Sequence[KeyPair], threshold: int = 1,
              root_threshold: int = 1, require: dict[str, tuple[str, ...]] | None = None,
              expires: datetime = T0 + 365 * DAY, sign_with: Sequence[KeyPair] | None = None,
              authorize: Sequence[KeyPair] = ()) -> SignedRoot:
    members = {ROLE_ROOT: [k.key.public for k in root], ROLE_RELEASE: [k.key.public for k in release]}
    if authorize:
        members["authorize"] = [k.key.public for k in authorize]
    names = {k.keyid: k.name for k in (*root, *release, *authorize)}
    return init_trust(trust_dir, members=members, thresholds={ROLE_ROOT: root_threshold, ROLE_RELEASE: threshold},
                      require=require or {}, names=names, expires=expires,
                      sign_with=[k.key for k in (sign_with if sign_with is not None else root)])


def new_root(trust_dir: Path, change: RootChange, *, sign_with: Sequence[KeyPair],
             expires: datetime = T0 + 365 * DAY) -> SignedRoot:
    signed, _ = next_version(trust_dir, change, expires=expires, sign_with=[k.key for k in sign_with])
    return signed


def copy_trust(src: Path, dst: Path) -> Path:
    """A site's copy of the authority's trust directory (the one-time, out-of-band bootstrap)."""
    shutil.copytree(src, dst)
    return dst


def build_bundle(make_spec: Callable[..., Path], out: Path, keys: Sequence[KeyPair], *, version: str = "1.0.0",
                 created: datetime = T0, expires: str | None = None, algorithm: str = "sha256",
                 name: str = "demo") -> Path:
    key, *others = [k.key for k in keys]
    build(load_spec(make_spec(version=version, name=name)), out=out, key=key, chunk_size=1024, now=created,
          expires=expires, algorithm=algorithm, also_sign=others)
    return out


def sign_extra(bundle: Path, key: SigningKey) -> None:
    from gapship.bundler.sign import sign_bundle

    sign_bundle(bundle, key)


def verify(bundle: Path, trust_dir: Path, *, now: datetime | None = T0 + DAY, prefix: Path | None = None,
           allow: Allowances = Allowances(), persist: bool = False) -> VerifiedManifest:
    trust = TrustStore.from_dir(trust_dir)
    state = HostState.for_prefix(prefix).load() if prefix is not None else None
    return verify_manifest(read_raw_bundle(bundle), trust=trust, state=state, now=now, allow=allow,
                           persist_root=trust.persist if persist else None)


def verify_and_install(bundle: Path, trust_dir: Path, prefix: Path, *, now: datetime | None = T0 + DAY,
                       allow: Allowances = Allowances()) -> InstallResult:
    """What ``gapship install`` does, with the clock given (None: the real one)."""
    verified = verify(bundle, trust_dir, now=now, prefix=prefix, allow=allow, persist=True)
    return install(bundle, verified, prefix=prefix, state=HostState.for_prefix(prefix))


def attach(bundle: Path, trust_dir: Path, *versions: int) -> None:
    """Copy the given root versions from the trust directory's history into bundle/roots/."""
    folder = bundle / "roots"
    folder.mkdir(exist_ok=True)
    for v in versions:
        shutil.copyfile(trust_dir / "roots" / f"{v}.root.json", folder / f"{v}.root.json")
