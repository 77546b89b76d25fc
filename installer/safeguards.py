"""Making the bundle's safeguards policy binding at a site (docs/safeguards.md, "Enforcement").

:func:`decide_for_site` is the whole decision for one bundle at one site, as a library caller makes
it (``install(..., site=decide_for_site(...))``): it reads the policy and the candidate authorizations
and calls :func:`decide`. :func:`decide` runs before anything is written. It reads the bundle's ``safeguards/policy.toml`` with
:func:`read_bundled_policy`, checks the site, the site authorizations and the safeguards in place, and
returns a :class:`SiteDecision` (which models to install, what the site must enforce) or raises
:class:`PolicyError` (exit 5) or, for an authorization without a valid authorize signature,
:class:`TrustError` (exit 4). :func:`write_site_records` then writes ``effective-policy.json`` and the
authorizations into the staging directory and makes them and ``safeguards/`` read-only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .bundle.files import (
    MAX_SIGNATURE_BYTES, MAX_SIGNATURE_FILES, MAX_UNVERIFIED_BYTES, SIGNATURES, Budget, list_entries, read_capped,
    unverified_bytes,
)
from .bundle.verify import read_small_files
from .errors import GapshipError, PolicyError, TrustError, UsageError
from .formats.authorization import AUTHORIZATIONS, DOCUMENT, MAX_AUTHORIZATIONS, MAX_DOCUMENT_BYTES
from .formats.manifest import POLICY_PATH, FileEntry
from .kit import canonical_json
from .formats.policy import Policy, parse_policy
from .formats.site import Site
from .formats.timestamps import format_time
from .trust import AuthorizeKeys, TrustStore, VerifiedAuthorization, VerifiedManifest, verify_authorization

MAX_POLICY_BYTES = 1024 * 1024
EFFECTIVE_POLICY = "effective-policy.json"
INSTALLED_AUTHORIZATIONS = "authorizations"
SAFEGUARDS_DIR = "safeguards"


def read_bundled_policy(bundle: Path, verified: VerifiedManifest) -> Policy:
    """Read ``safeguards/policy.toml`` straight out of the chunk(s) that hold it, check it against its
    hash in the signed manifest (:func:`~.bundle.verify.read_small_files` says why that is enough), and parse it."""
    m = verified.manifest
    entry = next((f for f in m.files() if f.path == POLICY_PATH), None)
    if entry is None:
        raise PolicyError(f"{m.name} {m.version} carries no {POLICY_PATH}; a site installs only bundles with a "
                          "safeguards policy", subject=POLICY_PATH)
    if entry.size > MAX_POLICY_BYTES:
        raise PolicyError(f"{POLICY_PATH} is {entry.size} bytes, over the {MAX_POLICY_BYTES}-byte cap",
                          subject=POLICY_PATH)
    data = read_small_files(bundle, m, [entry], cap=MAX_POLICY_BYTES)[POLICY_PATH]
    return parse_policy(data, source=f"{m.name} {m.version} {POLICY_PATH}", error=PolicyError)


@dataclass(frozen=True)
class SiteDecision:
    """Why and how this site may install this bundle."""

    site: Site
    sensitive: bool
    policy: Policy
    required: tuple[str, ...]  # safeguards the site must have: the policy's plus the authorizations'
    enabled: tuple[str, ...]  # models installed here
    skipped: tuple[str, ...]  # models of the bundle not enabled for this site: never written
    authorizations: tuple[VerifiedAuthorization, ...]

    def select(self, entry: FileEntry) -> bool:
        """The extractor's filter: False for the files of a model not enabled at this site."""
        parts = entry.path.split("/")
        return not (parts[0] == "models" and len(parts) > 2 and parts[1] in self.skipped)

    @property
    def expires(self) -> str | None:
        """The earliest expiry among the authorizations in force, if any."""
        return min((a.authorization.expires for a in self.authorizations), default=None)

    def summary(self) -> dict[str, object]:
        """For ``--json``, the receipt and the audit log."""
        return {
            "site_id": self.site.site_id,
            "sensitive": self.sensitive,
            "required_safeguards": list(self.required),
            "models_installed": list(self.enabled),
            "models_skipped": list(self.skipped),
            "authorizations": [a.to_dict() for a in self.authorizations],
            "expires": self.expires,
        }

    def effective_policy(self, verified: VerifiedManifest, *, now: datetime) -> dict[str, object]:
        """What a serving stack enforces at inference time (docs/safeguards.md, "effective-policy.json")."""
        m = verified.manifest
        return {
            "format": "gapship-effective-policy",
            "format_version": 1,
            "bundle": {"name": m.name, "version": m.version},
            "manifest_digest": verified.digest,
            "site": {"site_id": self.site.site_id, "sensitive": self.sensitive,
                     "safeguards_in_place": sorted(self.site.safeguards)},
            "prohibited_uses": list(self.policy.prohibited_uses),
            "required_safeguards": list(self.required),
            "models": {"enabled": list(self.enabled), "not_enabled": list(self.skipped)},
            "authorizations": [a.to_dict() for a in self.authorizations],
            "expires": self.expires,
            "decided_at": format_time(now),
        }


def decide(policy: Policy, verified: VerifiedManifest, *, site: Site, candidates: Iterable[RawAuthorization],
           keys: AuthorizeKeys, now: datetime) -> SiteDecision:
    """The site checks, in order: site allowed, authorizations, safeguards in place, models enabled."""
    m = verified.manifest
    rule = policy.sites.get(site.site_id)
    if rule is None:
        allowed = ", ".join(sorted(policy.sites))
        raise PolicyError(f"site {site.site_id!r} is not allowed by the policy of {m.name} {m.version} "
                          f"(allowed: {allowed})", subject=site.site_id)
    auths = _authorizations(candidates, verified, site=site, keys=keys, now=now, needed=rule.sensitive)
    required = tuple(sorted(set(rule.safeguards).union(*(a.authorization.require_safeguards for a in auths))))
    missing = [s for s in required if s not in site.safeguards]
    if missing:
        raise PolicyError(f"site {site.site_id!r} lacks required safeguard(s): {', '.join(missing)} "
                          f"(declare them in {site.source} once they are in place)", subject=missing[0])
    models = [c.name for c in m.components if c.kind == "model"]
    enabled = tuple(n for n in models if site.site_id in policy.models.get(n, ()))
    if models and not enabled:
        raise PolicyError(f"no model of {m.name} {m.version} is enabled for site {site.site_id!r} "
                          f"(bundle models: {', '.join(models)})", subject=site.site_id)
    return SiteDecision(site=site, sensitive=rule.sensitive, policy=policy, required=required, enabled=enabled,
                        skipped=tuple(n for n in models if n not in enabled), authorizations=tuple(auths))


def _authorizations(candidates: Iterable[RawAuthorization], verified: VerifiedManifest, *, site: Site,
                    keys: AuthorizeKeys, now: datetime, needed: bool) -> list[VerifiedAuthorization]:
    """Every authorization that applies here. One named with ``--authorization`` must apply or the
    install is refused; one carried in the bundle for another site is simply not for us. When the
    site is sensitive and none applies, the first reason found is the refusal."""
    m = verified.manifest
    good: list[VerifiedAuthorization] = []
    reasons: list[GapshipError] = []
    for raw in candidates:
        try:
            va = verify_authorization(raw.document, raw.signatures, keys=keys, source=raw.source)
            va.check_applies(site_id=site.site_id, name=m.name, version=m.version,
                             manifest_digest=verified.digest, now=now)
        except GapshipError as e:
            if raw.explicit:
                raise
            reasons.append(e)
            continue
        if va.digest not in {a.digest for a in good}:
            good.append(va)
    if needed and not good:
        if reasons:
            raise reasons[0]
        raise PolicyError(f"site {site.site_id!r} is sensitive: installing {m.name} {m.version} needs a site "
                          "authorization (--authorization DIR, or the bundle's authorizations/)",
                          subject=site.site_id)
    return good


def write_site_records(staging: Path, verified: VerifiedManifest, decision: SiteDecision | None, *,
                       now: datetime) -> None:
    """Write ``effective-policy.json`` and the authorizations (with a site), then make them and
    ``safeguards/`` read-only: files 0444, directories 0555. Called on the private staging directory
    before it is renamed into view, so they are never visible writable."""
    if decision is not None:
        (staging / EFFECTIVE_POLICY).write_bytes(canonical_json(decision.effective_policy(verified, now=now)) + b"\n")
        for auth in decision.authorizations:
            folder = staging / INSTALLED_AUTHORIZATIONS / auth.digest.replace(":", "-")
            (folder / SIGNATURES).mkdir(parents=True)
            (folder / DOCUMENT).write_bytes(auth.document)
            for name, sig in auth.signature_files.items():
                (folder / SIGNATURES / name).write_bytes(sig)
        _read_only(staging / EFFECTIVE_POLICY)
        _read_only(staging / INSTALLED_AUTHORIZATIONS)
    _read_only(staging / SAFEGUARDS_DIR)


def _read_only(path: Path) -> None:
    if not path.exists():
        return
    if path.is_dir():
        for child in path.iterdir():
            _read_only(child)
        os.chmod(path, 0o555)
    else:
        os.chmod(path, 0o444)


# -- reading authorization directories (bounded; nothing here is trusted) ---------------------------


@dataclass(frozen=True)
class RawAuthorization:
    source: str
    document: bytes
    signatures: Mapping[str, bytes]
    explicit: bool  # named with --authorization (must apply) rather than carried in the bundle


def read_authorization(path: Path, *, explicit: bool, budget: Budget | None = None) -> RawAuthorization:
    """Read an authorization directory (or its ``authorization.json``), with caps; what a bundle
    carries is also charged to ``budget``, the bundle's one budget for unverified files."""
    folder = path.parent if path.name == DOCUMENT and path.is_file() else path
    if not folder.is_dir():
        raise UsageError(f"authorization {str(path)!r} is not a directory holding {DOCUMENT}", subject=str(path))

    def read(file: Path, cap: int) -> bytes:
        return budget.read(file, cap) if budget else read_capped(file, cap, missing=TrustError)

    document = read(folder / DOCUMENT, MAX_DOCUMENT_BYTES)
    sigdir = folder / SIGNATURES
    if not explicit and sigdir.is_symlink():
        raise TrustError(f"{sigdir} is a symlink; bundles hold regular files only", subject=str(sigdir))
    names = list_entries(sigdir, MAX_SIGNATURE_FILES, shown=str(sigdir)) if sigdir.is_dir() else []
    signatures = {n: read(sigdir / n, MAX_SIGNATURE_BYTES) for n in names}
    return RawAuthorization(source=str(folder), document=document, signatures=signatures, explicit=explicit)


def carried_authorizations(bundle: Path) -> list[RawAuthorization]:
    """The authorizations a bundle directory carries under ``authorizations/*/`` (none is fine), read
    under what is left of the bundle's budget for unverified files after its signatures and roots."""
    folder = bundle / AUTHORIZATIONS
    if not folder.is_dir() or folder.is_symlink():
        return []
    entries = [folder / name for name in list_entries(folder, MAX_AUTHORIZATIONS, shown=str(folder))
               if not name.startswith(".")]
    budget = Budget(max(0, MAX_UNVERIFIED_BYTES - unverified_bytes(bundle)))
    return [read_authorization(p, explicit=False, budget=budget) for p in entries if p.is_dir() and not p.is_symlink()]


# -- the whole decision, as a library caller makes it -------------------------------------------------


def authorize_keys(trust_dir: Path, trust: TrustStore) -> AuthorizeKeys:
    """Who may sign site authorizations: the ``authorize`` role of the trust root that verified the
    bundle (after any rotation it carried, so revocations apply); in legacy mode (a folder of *.pub),
    ``TRUSTDIR/authorize/*.pub``, threshold 1, which :class:`TrustStore` reads into the same kind of
    root. Either way :func:`~.trust.verify_role` decides, with the root's algorithm and role rules."""
    return AuthorizeKeys.from_root(trust.root, source=str(trust_dir))


def decide_for_site(bundle: Path, verified: VerifiedManifest, *, site: Site, trust_dir: Path,
                    authorization_paths: Iterable[Path] = (), now: datetime | None = None) -> SiteDecision:
    """Enforce ``bundle``'s policy at ``site``: read its safeguards policy from the verified chunks,
    the authorizations named in ``authorization_paths`` (each must apply) and those the bundle carries,
    check them against the authorize role of ``trust_dir``, and return the decision or raise."""
    policy = read_bundled_policy(bundle, verified)
    candidates = [read_authorization(p, explicit=True) for p in authorization_paths]
    candidates += carried_authorizations(bundle)
    keys = authorize_keys(trust_dir, verified.trust or TrustStore.from_dir(trust_dir))
    return decide(policy, verified, site=site, candidates=candidates, keys=keys,
                  now=now or datetime.now(timezone.utc))
