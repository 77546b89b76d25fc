"""``gapship trust show``, ``update`` and ``add-sigstore``: the site's side of the trust directory
(docs/trust.md, docs/sigstore.md).

The connected side's commands (``init``, ``add-key``, ``remove-key``, ...) need private keys and live in
``gapship.bundler.cli.trust``, which adds them to the same ``trust`` group.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..crypto.sigstore import pin_sigstore_signer
from ..formats.root import MAX_ROOT_BYTES, ROLES, Envelope, Root
from ..formats.timestamps import parse_time, utc_now
from ..host.trustdir import HISTORY_DIR, parse_root_file_name, read_history, read_root_folder, root_file_name
from .group import cli, emit, json_option, trust_dir_option
from ..errors import HostError, TrustError, UsageError
from ..kit import Refusal, read_bounded
from ..host.state import HostState
from ..trust import TrustStore, apply_root_chain, check_roles_apart, root_label

# `--dir` was the trust directory's name in these commands alone; it stays accepted, hidden.
dir_option = trust_dir_option(help="Trust directory (root.json and roots/; or, legacy, *.pub files).",
                              aliases=("--dir",))


@cli.group()
def trust() -> None:
    """Show, update and (connected side) manage a trust root: keys, roles, thresholds (docs/trust.md)."""


@trust.command()
@dir_option
@click.option("--prefix", type=click.Path(path_type=Path),
              help="Also show this install root's anti-rollback floors and newest accepted signing time.")
@json_option
def show(trust_dir: Path, prefix: Path | None, as_json: bool) -> None:
    """Show the trust root in TRUSTDIR: version, expiry, roles, thresholds and keys."""
    store = TrustStore.from_dir(trust_dir)
    payload = describe(store, now=utc_now())
    lines = describe_lines(payload)
    if prefix is not None:
        state = HostState.for_prefix(prefix).load()
        payload["state"] = state.to_dict()
        lines += [f"floor {name}: {rec.highest_version}" for name, rec in sorted(state.bundles.items())]
        lines.append(f"newest accepted signing time: {state.newest_accepted or '-'}")
    emit(as_json, payload, lines)


@trust.command()
@dir_option
@click.argument("roots", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
def update(trust_dir: Path, roots: tuple[Path, ...], as_json: bool) -> None:
    """Accept new root versions from ROOTS (root files, or folders of <N>.root.json) into TRUSTDIR.

    Each must be signed by a threshold of the previous version's root keys and of its own, and be
    exactly one version up; each is written as soon as it is accepted."""
    store = TrustStore.from_dir(trust_dir)
    if store.legacy:
        raise UsageError(f"{trust_dir} is a legacy trust directory; it has no root keys to check a new root with",
                         subject=str(trust_dir))
    before = store.root.version
    store, accepted = apply_root_chain(store, _root_files(roots), persist=store.persist, where="update")
    text = f"trust root updated v{before} -> v{store.root.version}" if accepted else f"trust root already at v{before}"
    emit(as_json, {"trust_dir": str(trust_dir), "version": store.root.version, "accepted": list(accepted)}, [text])


def describe(store: TrustStore, *, now: datetime) -> dict[str, Any]:
    """The ``trust show --json`` object (docs/trust.md, "gapship trust show")."""
    root = store.root
    expired = root.expires is not None and now >= parse_time(root.expires, what="expires")
    payload: dict[str, Any] = {
        "trust_dir": store.source,
        "mode": "legacy" if store.legacy else "root",
        "version": None if store.legacy else root.version,
        "expires": root.expires,
        "expired": expired,
        "roles": {name: role.to_dict() for name, role in root.roles.items()},
        "keys": [_key_dict(store, root, keyid) for keyid in sorted(root.keys)],
        "floor_resets": [r.to_dict() for r in root.floor_resets],
        "history": sorted(read_history(Path(store.source))) if not store.legacy else [],
    }
    if not store.legacy:
        payload["ignored_files"] = sorted(p.name for p in Path(store.source).glob("*.pub"))
    payload["problems"] = _problems(root)
    return payload


def _problems(root: Root) -> list[str]:
    """What makes this root refuse every release and authorize decision (verify and install exit 4),
    so that an admin sees it before the next install does: today, one key in two roles."""
    try:
        check_roles_apart(root, where=root_label(root))
    except TrustError as e:
        return [e.message]
    return []


def describe_lines(payload: dict[str, Any]) -> list[str]:
    if payload["mode"] == "legacy":
        head = f"legacy trust directory {payload['trust_dir']}: any one of these keys may sign releases"
    else:
        state = "EXPIRED" if payload["expired"] else "valid"
        head = f"trust root v{payload['version']} in {payload['trust_dir']}: expires {payload['expires']} ({state})"
    lines = [head]
    for name in ROLES:
        role = payload["roles"].get(name)
        if role:
            need = f" in each of {' + '.join(role['require_algorithms'])}" if role.get("require_algorithms") else ""
            lines.append(f"  {name:<9} {role['threshold']} of {len(role['keyids'])} keys{need}")
    for key in payload["keys"]:
        lines.append(f"  key {key['keyid'][:16]}  {key['algorithm']:<9}  {','.join(key['roles']) or '-':<20} {key['name']}")
    for reset in payload["floor_resets"]:
        lines.append(f"  floor reset: {reset['bundle']} {reset['from']} -> {reset['to']}")
    lines += [f"  PROBLEM: {problem}" for problem in payload.get("problems", [])]
    if payload.get("ignored_files"):
        lines.append(f"  (ignored: {', '.join(payload['ignored_files'])}; root.json decides)")
    return lines


def _key_dict(store: TrustStore, root: Root, keyid: str) -> dict[str, Any]:
    return {"keyid": keyid, "algorithm": root.keys[keyid].algorithm, "name": store.names.get(keyid, ""),
            "roles": list(root.roles_of(keyid))}


def _root_files(paths: tuple[Path, ...]) -> dict[str, bytes]:
    """``<N>.root.json`` name -> bytes. A file with another name (e.g. an authority's ``root.json``) is
    filed under the version it claims; that claim is checked like everything else in the chain."""
    out: dict[str, bytes] = {}
    for path in paths:
        if path.is_dir():  # a trust directory (its roots/ history) or a folder of <N>.root.json files
            folder = path / HISTORY_DIR if (path / HISTORY_DIR).is_dir() else path
            try:
                versions = read_root_folder(folder)
            except HostError as e:  # the folder is the user's input, not this host's: exit 2, as for a file
                raise UsageError(e.message, subject=e.subject) from None
            out.update({root_file_name(v): d for v, d in versions.items()})
            continue
        data = read_bounded(path, cap=MAX_ROOT_BYTES, refuse=_refuse_root_file, follow_symlinks=True)
        name = path.name if parse_root_file_name(path.name) else _claimed_name(data, str(path))
        out[name] = data
    return out


def _refuse_root_file(r: Refusal) -> Exception:
    if r.reason == "too-large":  # Envelope.from_bytes's words, which said it when the file was read whole
        return TrustError(f"{r.path} is {r.size} bytes, over the {MAX_ROOT_BYTES}-byte cap", subject=str(r.path))
    return UsageError(f"cannot read {r.path}: {r.strerror}", subject=str(r.path))


def _claimed_name(data: bytes, where: str) -> str:
    signed = Envelope.from_bytes(data, where=where).signed
    version = signed.get("version") if isinstance(signed, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TrustError(f"{where} does not name a root version", subject=where)
    return root_file_name(version)


@trust.command(name="add-sigstore")
@trust_dir_option(help="Trust directory to pin the signer in (created if missing).")
@click.option("--trusted-root", required=True, type=click.Path(path_type=Path),
              help="Sigstore trusted_root.json to pin (copied into the trust directory).")
@click.option("--identity", required=True,
              help="Certificate identity (SAN), e.g. https://github.com/ORG/REPO/.github/workflows/release.yml@refs/tags/v1.0.0.")
@click.option("--issuer", required=True, help="OIDC issuer, e.g. https://token.actions.githubusercontent.com.")
@click.option("--name", default=None, help="Signer name (file name of the pin); derived from the identity if omitted.")
@json_option
def add_sigstore(trust_dir: Path, trusted_root: Path, identity: str, issuer: str, name: str | None,
                 as_json: bool) -> None:
    """Pin a sigstore signer: its signatures count toward the threshold like one key."""
    signer = pin_sigstore_signer(trust_dir, trusted_root=trusted_root, identity=identity, issuer=issuer, name=name)
    emit(as_json, {
        "signer": signer.signer_id,
        "name": signer.name,
        "identity": signer.identity,
        "issuer": signer.issuer,
        "trusted_root": str(signer.trusted_root),
    }, [
        f"pinned sigstore signer {signer.name}: identity {signer.identity}, issuer {signer.issuer}",
        f"trusted root copied to {signer.trusted_root}",
    ])
