"""Making the bundle's safeguards policy binding at a site (docs/safeguards.md, "Enforcement").

:func:`decide` runs before anything is written. It reads the bundle's ``safeguards/policy.toml`` with
:func:`read_bundled_policy`, checks the site, the site authorizations and the safeguards in place, and
returns a :class:`SiteDecision` (which models to install, what the site must enforce) or raises
:class:`PolicyError` (exit 5) or, for an authorization without a valid authorize signature,
:class:`TrustError` (exit 4). :func:`write_site_records` then writes ``effective-policy.json`` and the
authorizations into the staging directory and makes them and ``safeguards/`` read-only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .formats.authorization import (
    DOCUMENT, AuthorizeKeys, RawAuthorization, VerifiedAuthorization, format_time, verify_authorization,
)
from .bundle.files import SIGNATURES
from .errors import GapshipError, PolicyError
from .formats.manifest import POLICY_PATH, FileEntry, canonical_json
from .formats.policy import Policy, parse_policy
from .formats.site import Site
from .trust import VerifiedManifest
from .bundle.verify import read_small_files

MAX_POLICY_BYTES = 1024 * 1024
EFFECTIVE_POLICY = "effective-policy.json"
INSTALLED_AUTHORIZATIONS = "authorizations"
SAFEGUARDS_DIR = "safeguards"


def read_bundled_policy(bundle: Path, verified: VerifiedManifest) -> Policy:
    """Read ``safeguards/policy.toml`` straight out of the chunk(s) that hold it, check it against its
    hash in the signed manifest (:func:`~.verify.read_small_files` says why that is enough), and parse it."""
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
