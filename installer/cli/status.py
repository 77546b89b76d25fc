"""``gapship status``: what is installed under a prefix, read from the receipts (docs/safeguards.md,
"Status").

It reads only what gapship itself wrote (``receipt.json`` beside each version, the ``current`` link;
for a receipt written before it recorded ``bundle_expires``, the kept ``manifest.json``), verifies
nothing and changes nothing. A version whose receipt cannot be read is listed with the problem rather
than failing the whole report.

Two expiries are shown, named apart (docs/cli.md, "`gapship status`"): ``bundle_expires``, the signed
manifest's own ``expires``, and ``authorization_expires``, the earliest expiry of the site
authorizations in force at install. ``expires`` keeps its old meaning: the authorizations' one.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from packaging.version import InvalidVersion, Version

from ..formats.authorization import parse_time
from .group import cli, emit, json_option
from ..errors import GapshipError, UsageError
from ..deploy.install import CURRENT, MAX_RECEIPT_BYTES, RECEIPT, STAGING_PREFIX
from ..formats.site import load_site
from ..bundle.files import MANIFEST
from ..formats.manifest import MAX_MANIFEST_BYTES
from ..kit import Malformed, Refusal, parse_json, read_bounded, read_optional
from ..sbom import MAX_SBOM_BYTES, SBOM_PATH, packages

BUNDLE_EXPIRES = "bundle_expires"  # in the receipt (since it recorded it) and in `status --json`


@cli.command()
@click.option("--prefix", required=True, type=click.Path(path_type=Path), help="Install root.")
@click.option("--site-config", type=click.Path(path_type=Path, readable=False),
              help="This host's site file (default: /etc/gapship/site.toml when it exists).")
@json_option
def status(prefix: Path, site_config: Path | None, as_json: bool) -> None:
    """Show what is installed under PREFIX: versions, the active one, signers, site and authorizations."""
    if not prefix.is_dir():
        raise UsageError(f"prefix {str(prefix)!r} does not exist", subject=str(prefix))
    site = load_site(site_config)
    now = datetime.now(timezone.utc)
    bundles = [_bundle(home, now) for home in sorted(prefix.iterdir())
               if home.is_dir() and not home.is_symlink() and not home.name.startswith(".")]  # .gapship/: host state
    bundles = [b for b in bundles if b["versions"]]
    payload = {"prefix": str(prefix), "site": site.site_id if site else None, "bundles": bundles}
    lines = [f"prefix {prefix}" + (f" (site {site.site_id})" if site else "")]
    for b in bundles:
        lines.append(f"{b['name']}: active {b['active'] or 'none'}")
        lines += [line for v in b["versions"] for line in _lines(v)]
    if not bundles:
        lines.append("nothing installed")
    emit(as_json, payload, lines)


def _bundle(home: Path, now: datetime) -> dict[str, Any]:
    link = home / CURRENT
    active = os.readlink(link) if link.is_symlink() else None
    versions = [_version(d, active, now) for d in home.iterdir()
                if d.is_dir() and not d.is_symlink() and not d.name.startswith((STAGING_PREFIX, "."))
                and (d / RECEIPT).exists()]
    versions.sort(key=lambda v: _order(v["version"]))
    return {"name": home.name, "active": active, "versions": versions}


def _order(text: str) -> tuple[int, Version | str]:
    try:
        return (0, Version(text))
    except InvalidVersion:
        return (1, text)  # after every PEP 440 version; a Version is never compared with a str


def _version(path: Path, active: str | None, now: datetime) -> dict[str, Any]:
    out: dict[str, Any] = {"version": path.name, "active": path.name == active, "path": str(path)}
    try:
        data = read_bounded(path / RECEIPT, cap=MAX_RECEIPT_BYTES, refuse=_receipt_problem)  # never a link
        receipt = parse_json(data, source=RECEIPT, error=Malformed, invalid="{detail}")
        if not isinstance(receipt, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as e:
        return {**out, "problem": f"{RECEIPT} unreadable: {e}"}
    site = receipt.get("site") if isinstance(receipt.get("site"), dict) else None
    auths = site.get("authorizations", []) if site else []
    authorization_expires = site.get("expires") if site else None
    return {
        **out,
        **_bundle_expiry(path, receipt, now),
        "authorization_expires": authorization_expires,
        "installed_at": receipt.get("installed_at"),
        "installed_by": receipt.get("installed_by"),
        "manifest_digest": receipt.get("manifest_digest"),
        "signers": receipt.get("signers", []),
        "site": site.get("site_id") if site else None,
        "models_installed": site.get("models_installed") if site else None,
        "models_skipped": site.get("models_skipped", []) if site else [],
        "authorizations": [{"id": a.get("id"), "expires": a.get("expires"), "expired": _expired(a.get("expires"), now)}
                           for a in auths if isinstance(a, dict)],
        "expires": authorization_expires,  # kept: the earliest authorization expiry, as before
        "base": _base(receipt.get("base")),  # a delta's base (null: a full bundle, or an older receipt)
        "shared": receipt.get("shared") if isinstance(receipt.get("shared"), dict) else None,
        **_packages(path),
    }


def _packages(path: Path) -> dict[str, Any]:
    """``packages``: the wheels the installed SBOM lists (docs/sbom.md), with ``sbom`` its path; both
    null for a version installed without one; ``sbom_problem`` when it is there but cannot be read."""
    sbom = path / SBOM_PATH
    try:
        data = read_optional(sbom, cap=MAX_SBOM_BYTES, refuse=_receipt_problem)
        if data is None:
            return {"sbom": None, "packages": None}
        return {"sbom": str(sbom), "packages": packages(data)}
    except (OSError, ValueError, GapshipError) as e:
        return {"sbom": str(sbom), "packages": None, "sbom_problem": f"{SBOM_PATH} unreadable: {e}"}


def _base(raw: object) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    return {k: raw.get(k) for k in ("name", "version", "manifest_digest")}


def _bundle_expiry(path: Path, receipt: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``bundle_expires`` (the manifest's ``expires``; null: it does not expire) and ``bundle_expired``,
    from the receipt, or, for a receipt written before it recorded them, from the kept manifest copy;
    when that cannot be read either, both are null and ``bundle_expires_problem`` says why."""
    if BUNDLE_EXPIRES in receipt:
        stamp = receipt[BUNDLE_EXPIRES]
    else:
        try:
            data = read_bounded(path / MANIFEST, cap=MAX_MANIFEST_BYTES, refuse=_receipt_problem, follow_symlinks=True)
            manifest = parse_json(data, source=MANIFEST, error=Malformed, invalid="{detail}")
            if not isinstance(manifest, dict):
                raise ValueError("not an object")
            stamp = manifest.get("expires")
        except (OSError, ValueError) as e:
            return {BUNDLE_EXPIRES: None, "bundle_expired": None, "bundle_expires_problem": f"{MANIFEST} unreadable: {e}"}
    if stamp is not None and not isinstance(stamp, str):
        return {BUNDLE_EXPIRES: None, "bundle_expired": None, "bundle_expires_problem": f"expires {stamp!r} is not a time"}
    return {BUNDLE_EXPIRES: stamp, "bundle_expired": _expired(stamp, now) if stamp is not None else None}


def _receipt_problem(r: Refusal) -> Exception:
    """The OSError open() raised, as before (its text is the reported problem); else the kit's words."""
    return r.oserror or Malformed(r.strerror)


def _expired(stamp: object, now: datetime) -> bool | None:
    try:
        return parse_time(str(stamp)) <= now
    except ValueError:
        return None


def _lines(v: dict[str, Any]) -> list[str]:
    mark = "*" if v["active"] else " "
    if "problem" in v:
        return [f" {mark} {v['version']}: {v['problem']}"]
    signers = ", ".join(s[:16] for s in v["signers"]) or "none"
    text = f" {mark} {v['version']}  installed {v['installed_at']}  signed by {signers}"
    if v["site"]:
        text += f"  site {v['site']}"
    if v["models_skipped"]:
        text += f"  (left out: {', '.join(v['models_skipped'])})"
    lines = [text]
    if v.get("base"):
        lines.append(f"     delta of {v['base']['name']} {v['base']['version']} ({str(v['base']['manifest_digest'])[:23]})")
    if v.get("bundle_expires_problem"):
        lines.append(f"     bundle expiry unknown ({v['bundle_expires_problem']})")
    elif v.get(BUNDLE_EXPIRES):
        state = "EXPIRED" if v["bundle_expired"] else "valid until"
        lines.append(f"     bundle {state} {v[BUNDLE_EXPIRES]}")
    for a in v["authorizations"]:
        state = "EXPIRED" if a["expired"] else "valid until"
        lines.append(f"     authorization {str(a['id'])[:23]} {state} {a['expires']}")
    if v.get("packages"):
        lines.append("     packages: " + ", ".join(f"{p['name']} {p['version']}" for p in v["packages"]))
    return lines
