"""``gapship audit verify`` and ``gapship audit export`` (docs/safeguards.md, "The audit log")."""

from __future__ import annotations

from pathlib import Path

import click

from ..host.audit import DEFAULT_HOST_KEY, DEFAULT_LOG, export_log, host_key, verify_export, verify_log
from .group import cli, emit, json_option
from ..errors import UsageError
from ..crypto.keys import MAX_KEY_FILE_BYTES, PublicKey
from ..kit import Refusal, read_bounded


@cli.group(name="audit")
def audit_group() -> None:
    """Check the host's hash-chained audit log, or export a signed copy of it."""


@audit_group.command(name="verify")
@click.option("--log", type=click.Path(path_type=Path), help=f"The audit log to check (default: {DEFAULT_LOG}).")
@click.option("--export", "export_file", type=click.Path(path_type=Path),
              help="Check a signed export instead (needs --pubkey): works anywhere, with only the public key.")
@click.option("--pubkey", type=click.Path(path_type=Path), help="The host's public key (HOST.pub) for --export.")
@click.option("--previous", type=click.Path(path_type=Path),
              help="With --export: an earlier export of the same log, which this one must extend.")
@json_option
def verify_command(log: Path | None, export_file: Path | None, pubkey: Path | None, previous: Path | None,
                   as_json: bool) -> None:
    """Check that no line of the audit log was edited, deleted, inserted or reordered (exit 3 names the line)."""
    if export_file is None:
        if pubkey is not None or previous is not None:
            raise UsageError("--pubkey and --previous go with --export")
        path = log or DEFAULT_LOG
        summary = verify_log(path)
        emit(as_json, {"log": str(path), **summary.to_dict()},
             [f"OK {path}: {summary.lines} line(s), hash chain intact, head {summary.head}"])
        return
    if pubkey is None or log is not None:
        raise UsageError("--export needs --pubkey HOST.pub, and no --log")
    data = read_bounded(pubkey, cap=MAX_KEY_FILE_BYTES, refuse=_refuse_pubkey, follow_symlinks=True)
    key = PublicKey.from_pem(data, source=str(pubkey))
    before = verify_export(previous, pubkey=key) if previous is not None else None
    result = verify_export(export_file, pubkey=key, previous=before)
    lines = [
        f"OK {export_file}: signed by host {result.header.get('host')} (key {key.keyid[:16]}) "
        f"at {result.header.get('exported_at')}",
        f"OK {result.log.lines} line(s), hash chain intact, head {result.log.head}",
    ]
    if previous is not None and before is not None:
        lines.append(f"OK it extends {previous} ({before.log.lines} line(s))")
    emit(as_json, {"export": str(export_file), "previous": str(previous) if previous else None,
                   **result.to_dict()}, lines)


def _refuse_pubkey(r: Refusal) -> Exception:
    if r.reason == "missing":
        return UsageError(f"public key {str(r.path)!r} does not exist", subject=str(r.path))
    if r.reason == "too-large":  # PublicKey.from_pem's words for a key file over the cap
        return UsageError(f"{r.path}: key file over {MAX_KEY_FILE_BYTES} bytes", subject=str(r.path))
    return UsageError(f"cannot read public key {r.path}: {r.strerror}", subject=str(r.path))


@audit_group.command(name="export")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The signed copy to write.")
@click.option("--log", type=click.Path(path_type=Path), help=f"The audit log to export (default: {DEFAULT_LOG}).")
@click.option("--host-key", "host_key_path", type=click.Path(path_type=Path),
              help=f"The host's signing key, made at first use (default: {DEFAULT_HOST_KEY}).")
@json_option
def export_command(out: Path, log: Path | None, host_key_path: Path | None, as_json: bool) -> None:
    """Write a signed copy of the audit log that can travel back across the gap."""
    key, created = host_key(host_key_path or DEFAULT_HOST_KEY)
    source = log or DEFAULT_LOG
    result = export_log(source, out, key=key)
    made = f"made host key {key.path} (public: {key.public_path}); " if created else ""
    emit(as_json, {"out": str(out), "log": str(source), "host_key_created": created,
                   "pubkey": str(key.public_path), **result.to_dict()}, [
        f"exported {result.log.lines} line(s) of {source} to {out}, head {result.log.head}",
        f"{made}signed by host key {key.public.keyid[:16]}; check it with "
        f"`gapship audit verify --export {out.name} --pubkey HOST.pub`",
    ])
