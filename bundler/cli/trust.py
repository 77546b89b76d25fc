"""The connected side of ``gapship trust``: make and change a trust root with the offline root keys
(docs/trust.md, "Managing a trust root"). Each change writes the next root version, signed by every
``--sign-with`` key, after checking that a site would accept it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from ...installer.formats.root import ROLE_AUTHORIZE, ROLE_RELEASE, ROLE_ROOT, ROLES, SignedRoot
from ...installer.formats.timestamps import utc_now
from ...installer.cli.group import emit, json_option
from ...installer.errors import UsageError
from ...installer.crypto.keys import ALGORITHMS, PublicKey
from ...installer.trust import TrustStore
from ...installer.cli.trust import dir_option, trust
from ..expiry import parse_expires
from ..keys import SigningKey, load_public_key
from ..roots import (
    RootChange, add_key, attach_roots, find_key, floor_reset, init_trust, next_version, remove_key, renew, set_role,
)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_ROOT_LIFETIME = "365d"


def signing_options(f: F) -> F:
    f = click.option("--expires", default=DEFAULT_ROOT_LIFETIME, show_default=True,
                     help="Expiry of the new root version: a duration from now (365d) or YYYY-MM-DDTHH:MM:SSZ.")(f)
    f = click.option("--sign-with", "sign_with", multiple=True, required=True, type=click.Path(path_type=Path),
                     help="Private root key to sign with (repeatable; rotation needs the old and new root keys).")(f)
    return json_option(f)


role_choice = click.Choice(ROLES)


@trust.command("init")
@dir_option
@click.option("--root-key", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Public key (.pub) allowed to sign new roots (repeatable).")
@click.option("--release-key", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Public key (.pub) allowed to sign bundles (repeatable).")
@click.option("--authorize-key", multiple=True, type=click.Path(path_type=Path),
              help="Public key (.pub) allowed to sign site authorizations (repeatable).")
@click.option("--threshold", default=1, show_default=True, type=click.IntRange(min=1),
              help="Distinct release signatures a bundle needs.")
@click.option("--root-threshold", default=1, show_default=True, type=click.IntRange(min=1),
              help="Distinct root signatures a new root needs.")
@click.option("--authorize-threshold", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--require-algorithms", "require", multiple=True, metavar="ROLE=ALG,ALG",
              help="Hybrid signing: the threshold must be met in each algorithm, e.g. release=ed25519,ml-dsa-87.")
@signing_options
def init_command(trust_dir: Path, root_key: tuple[Path, ...], release_key: tuple[Path, ...],
                 authorize_key: tuple[Path, ...], threshold: int, root_threshold: int, authorize_threshold: int,
                 require: tuple[str, ...], expires: str, sign_with: tuple[Path, ...], as_json: bool) -> None:
    """Write version 1 of a trust root into TRUSTDIR (kept with the root keys; copy it to each site)."""
    names: dict[str, str] = {}
    members = {ROLE_ROOT: _pubs(root_key, names), ROLE_RELEASE: _pubs(release_key, names)}
    if authorize_key:
        members[ROLE_AUTHORIZE] = _pubs(authorize_key, names)
    thresholds = {ROLE_ROOT: root_threshold, ROLE_RELEASE: threshold, ROLE_AUTHORIZE: authorize_threshold}
    signed = init_trust(trust_dir, members=members, thresholds=thresholds, require=_requirements(require), names=names,
                        expires=_expiry(expires), sign_with=_signers(sign_with))
    _report(as_json, trust_dir, signed, "created")


@trust.command("add-key")
@dir_option
@click.argument("key", type=click.Path(path_type=Path))
@click.option("--role", type=role_choice, default=ROLE_RELEASE, show_default=True)
@click.option("--name", help="A label for the key (default: the .pub file's name).")
@click.option("--threshold", type=click.IntRange(min=1), help="New threshold for the role (default: unchanged).")
@signing_options
def add_key_command(trust_dir: Path, key: Path, role: str, name: str | None, threshold: int | None, expires: str,
                    sign_with: tuple[Path, ...], as_json: bool) -> None:
    """Add KEY (a .pub file) to a role, as the next root version."""
    public = _pub(key)
    change = add_key(public, role=role, name=name or key.name.removesuffix(".pub"), threshold=threshold)
    _next(as_json, trust_dir, change, expires, sign_with, f"added {public.keyid[:16]} to {role}")


@trust.command("remove-key")
@dir_option
@click.argument("key")
@click.option("--role", type=role_choice, help="Only from this role (default: from every role: a revocation).")
@click.option("--threshold", type=click.IntRange(min=1), help="New threshold for the role(s) (default: unchanged).")
@signing_options
def remove_key_command(trust_dir: Path, key: str, role: str | None, threshold: int | None, expires: str,
                       sign_with: tuple[Path, ...], as_json: bool) -> None:
    """Take KEY (key id, key name or .pub file) out of the root: its signatures stop counting at the new version."""
    keyid = find_key(TrustStore.from_dir(trust_dir).root, key)
    change = remove_key(keyid, role=role, threshold=threshold)
    _next(as_json, trust_dir, change, expires, sign_with, f"removed {keyid[:16]} from {role or 'every role'}")


@trust.command("set-role")
@dir_option
@click.option("--role", type=role_choice, required=True)
@click.option("--threshold", type=click.IntRange(min=1))
@click.option("--require-algorithms", "require", metavar="ALG,ALG",
              help="Hybrid: meet the threshold in each algorithm; 'none' to stop requiring.")
@signing_options
def set_role_command(trust_dir: Path, role: str, threshold: int | None, require: str | None, expires: str,
                     sign_with: tuple[Path, ...], as_json: bool) -> None:
    """Change a role's threshold or required algorithms, as the next root version."""
    algorithms = None if require is None else () if require == "none" else _algorithms(require)
    _next(as_json, trust_dir, set_role(role, threshold=threshold, require=algorithms), expires, sign_with,
          f"changed the {role} role")


@trust.command("renew")
@dir_option
@signing_options
def renew_command(trust_dir: Path, expires: str, sign_with: tuple[Path, ...], as_json: bool) -> None:
    """Re-sign the root unchanged with a new expiry, as the next root version."""
    _next(as_json, trust_dir, renew(), expires, sign_with, "renewed")


@trust.command("reset-floor")
@dir_option
@click.option("--bundle", required=True, help="Bundle name whose anti-rollback floor to lower.")
@click.option("--from", "from_version", help="The bad floor to replace, exactly (e.g. the fast-forwarded version).")
@click.option("--to", "to_version", help="The floor to enforce instead.")
@click.option("--clear", is_flag=True, help="Remove the reset for --bundle instead.")
@signing_options
def reset_floor_command(trust_dir: Path, bundle: str, from_version: str | None, to_version: str | None, clear: bool,
                        expires: str, sign_with: tuple[Path, ...], as_json: bool) -> None:
    """Recover from a fast-forward: a root-signed reset of a bundle's floor (docs/trust.md)."""
    if clear == bool(from_version and to_version):
        raise UsageError("give either --from and --to, or --clear", subject="--from")
    change = floor_reset(bundle, from_version=None if clear else from_version, to_version=None if clear else to_version)
    what = f"cleared the floor reset of {bundle}" if clear else f"floor of {bundle}: {from_version} -> {to_version}"
    _next(as_json, trust_dir, change, expires, sign_with, what)


@trust.command("attach")
@click.argument("bundle", type=click.Path(path_type=Path))
@dir_option
@click.option("--since", default=1, show_default=True, type=click.IntRange(min=0),
              help="Attach the root versions above this one (the oldest root the sites may still have).")
@json_option
def attach_command(bundle: Path, trust_dir: Path, since: int, as_json: bool) -> None:
    """Copy TRUSTDIR's root versions above --since into BUNDLE/roots/, so sites rotate as they install."""
    names = attach_roots(bundle, trust_dir, since=since)
    emit(as_json, {"bundle": str(bundle), "roots": names}, [f"attached {', '.join(names)} to {bundle}/roots/"])


# -- helpers ---------------------------------------------------------------------------------------


def _next(as_json: bool, trust_dir: Path, change: RootChange, expires: str, sign_with: tuple[Path, ...],
          what: str) -> None:
    signed, old = next_version(trust_dir, change, expires=_expiry(expires), sign_with=_signers(sign_with))
    _report(as_json, trust_dir, signed, f"{what}; v{old.version} ->")


def _report(as_json: bool, trust_dir: Path, signed: SignedRoot, what: str) -> None:
    root = signed.root
    signers = sorted({s.keyid for s in signed.envelope.signatures})
    emit(as_json, {"trust_dir": str(trust_dir), "version": root.version, "expires": root.expires,
                   "signed_by": signers}, [
        f"{what} trust root v{root.version} in {trust_dir} (expires {root.expires})",
        f"signed by {', '.join(k[:16] for k in signers)}",
    ])


def _expiry(text: str) -> datetime:
    return parse_expires(text, start=utc_now())


def _pub(path: Path) -> PublicKey:
    return load_public_key(path)


def _pubs(paths: tuple[Path, ...], names: dict[str, str]) -> list[PublicKey]:
    keys = [_pub(p) for p in paths]
    for path, key in zip(paths, keys):
        names.setdefault(key.keyid, path.name.removesuffix(".pub"))
    return keys


def _signers(paths: tuple[Path, ...]) -> list[SigningKey]:
    return [SigningKey.load(p) for p in paths]


def _algorithms(text: str) -> tuple[str, ...]:
    algorithms = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise UsageError(f"algorithms {text!r}: each must be one of {', '.join(ALGORITHMS)}", subject=text)
    return algorithms


def _requirements(items: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        role, sep, algorithms = item.partition("=")
        if not sep or role not in ROLES:
            raise UsageError(f"--require-algorithms {item!r} must be ROLE=ALG,ALG with ROLE one of {', '.join(ROLES)}",
                             subject=item)
        out[role] = _algorithms(algorithms)
    return out
