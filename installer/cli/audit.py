"""``gapship audit verify``, ``gapship audit export`` and ``gapship audit seal`` (docs/safeguards.md,
"The audit log"). Both ``verify`` (of a log) and ``export`` cross-check the log against the audit
references the prefixes keep (installer/deploy/evidence.py): those its install records name, and any
``--prefix``."""

from __future__ import annotations

from pathlib import Path

import click

from ..host.audit import (
    DEFAULT_HOST_KEY, DEFAULT_LOG, Gather, RefCheck, check_export_target, cross_check_log, export_log, host_key,
    seal_log, verify_export,
)
from ._host import site_log
from .group import cli, emit, json_option
from ..errors import IntegrityError, UsageError
from ..crypto.keys import MAX_KEY_FILE_BYTES, PublicKey
from ..kit import Refusal, read_bounded


@cli.group(name="audit")
def audit_group() -> None:
    """Check the host's hash-chained audit log, export a signed copy of it, or seal a torn last line."""


_PREFIX_OPTION = click.option(
    "--prefix", "prefixes", multiple=True, type=click.Path(path_type=Path),
    help="Also cross-check this install root's receipts and host state (repeatable; the prefixes the "
         "log's install records name are always checked).")


def _gather(prefixes: tuple[Path, ...]) -> Gather:
    from ..deploy.evidence import gather_references  # the prefix layout: only when a log is checked

    return lambda named: gather_references(named, prefixes)


def _reference_lines(check: RefCheck | None) -> list[str]:
    if check is None or not check.checked:
        return []
    head = check.highest
    return [f"OK {check.checked} audit reference(s) in {', '.join(check.prefixes)} match the log"
            + (f" (newest: line {head.ref.seq}, {head.source})" if head else "")]


@audit_group.command(name="verify")
@click.option("--log", type=click.Path(path_type=Path),
              help=f"The audit log to check (default: the site's, {DEFAULT_LOG} "
              "unless the site file's audit_log names another).")
@click.option("--export", "export_file", type=click.Path(path_type=Path),
              help="Check a signed export instead (needs --pubkey): works anywhere, with only the public key.")
@click.option("--pubkey", type=click.Path(path_type=Path), help="The host's public key (HOST.pub) for --export.")
@click.option("--previous", type=click.Path(path_type=Path),
              help="With --export: an earlier export of the same log, which this one must extend.")
@click.option("--since", type=click.Path(path_type=Path),
              help="With --export: a transparency-log export, checked from this accepted checkpoint on.")
@click.option("--save-checkpoint", type=click.Path(path_type=Path),
              help="With --since: write the export's checkpoint here once it is verified (the next --since).")
@_PREFIX_OPTION
@json_option
def verify_command(log: Path | None, export_file: Path | None, pubkey: Path | None, previous: Path | None,
                   since: Path | None, save_checkpoint: Path | None, prefixes: tuple[Path, ...], as_json: bool) -> None:
    """Check that no line of the audit log was edited, deleted, inserted or reordered (exit 3 names the line),
    and that it holds every record the prefixes' receipts and host state name."""
    if since is not None or save_checkpoint is not None:
        from .audit_tlog import verify_since_command

        if export_file is None or pubkey is None or since is None or log or previous or prefixes:
            raise UsageError("--since needs --export FILE and --pubkey HOST.pub, and no --log, --previous or --prefix")
        verify_since_command(export_file, pubkey, since, save_checkpoint, as_json)
        return
    if export_file is None:
        if pubkey is not None or previous is not None:
            raise UsageError("--pubkey and --previous go with --export")
        path = log or site_log()
        summary, check = cross_check_log(path, gather=_gather(prefixes))
        sealed = [f"sealed line(s): {', '.join(map(str, summary.sealed))} (see `gapship audit seal`)"] if summary.sealed else []
        emit(as_json, {"log": str(path), **summary.to_dict(), "sealed": list(summary.sealed),
                       "references": check.to_dict()},
             [f"OK {path}: {summary.lines} line(s), hash chain intact, head {summary.head}", *sealed,
              *_reference_lines(check)])
        return
    if pubkey is None or log is not None or prefixes:
        raise UsageError("--export needs --pubkey HOST.pub, and no --log or --prefix (the export carries its "
                         "own cross-check)")
    data = read_bounded(pubkey, cap=MAX_KEY_FILE_BYTES, refuse=_refuse_pubkey, follow_symlinks=True)
    key = PublicKey.from_pem(data, source=str(pubkey))
    from ..host.tlog_export import is_tlog_export

    if is_tlog_export(export_file):
        raise UsageError(f"{export_file} is a transparency-log export: check it with --since CHECKPOINT",
                         subject=str(export_file))
    before = verify_export(previous, pubkey=key) if previous is not None else None
    result = verify_export(export_file, pubkey=key, previous=before)
    lines = [
        f"OK {export_file}: signed by host {result.header.get('host')} (key {key.keyid[:16]}) "
        f"at {result.header.get('exported_at')}",
        f"OK {result.log.lines} line(s), hash chain intact, head {result.log.head}",
    ]
    if previous is not None and before is not None:
        lines.append(f"OK it extends {previous} ({before.log.lines} line(s))")
    refs = result.header.get("references")
    if isinstance(refs, dict) and refs.get("checked"):
        lines.append(f"OK the {refs.get('checked')} audit reference(s) the prefixes held when it was exported "
                     "are in it")
    emit(as_json, {"export": str(export_file), "previous": str(previous) if previous else None,
                   **result.to_dict(), "references": refs if isinstance(refs, dict) else None}, lines)


def _refuse_pubkey(r: Refusal) -> Exception:
    if r.reason == "missing":
        return UsageError(f"public key {str(r.path)!r} does not exist", subject=str(r.path))
    if r.reason == "too-large":  # PublicKey.from_pem's words for a key file over the cap
        return UsageError(f"{r.path}: key file over {MAX_KEY_FILE_BYTES} bytes", subject=str(r.path))
    return UsageError(f"cannot read public key {r.path}: {r.strerror}", subject=str(r.path))


@audit_group.command(name="export")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The signed copy to write.")
@click.option("--log", type=click.Path(path_type=Path),
              help=f"The audit log to export (default: the site's, {DEFAULT_LOG} "
              "unless the site file's audit_log names another).")
@click.option("--host-key", "host_key_path", type=click.Path(path_type=Path),
              help=f"The host's signing key, made at first use (default: {DEFAULT_HOST_KEY}).")
@click.option("--since", type=click.Path(path_type=Path),
              help="Export only the records after this signed checkpoint, with a new checkpoint and the "
                   "consistency proof from it (a compressed transparency-log export).")
@click.option("--pq-host-key", "pq_key_path", type=click.Path(path_type=Path),
              help="With --since: also sign the new checkpoint with this ML-DSA-87 key.")
@click.option("--trust", "trust_dir", type=click.Path(path_type=Path),
              help="With --since: the site's trust directory; if its root requires ML-DSA-87, sign with it too.")
@_PREFIX_OPTION
@json_option
def export_command(out: Path, log: Path | None, host_key_path: Path | None, since: Path | None,
                   pq_key_path: Path | None, trust_dir: Path | None, prefixes: tuple[Path, ...], as_json: bool) -> None:
    """Write a signed copy of the audit log that can travel back across the gap, with its cross-check
    against the prefixes (an export of a log cut short is still written, and says what was cut: exit 3).
    With --since: the records after that checkpoint only, with the proof that they extend it."""
    if since is not None or pq_key_path is not None or trust_dir is not None:
        from .audit_tlog import export_since_command

        if since is None or prefixes:
            raise UsageError("--pq-host-key and --trust go with --since; --since does not take --prefix")
        export_since_command(log or site_log(), since, out, host_key_path, pq_key_path, trust_dir, as_json)
        return
    check_export_target(out)  # a bad --out is refused before the host key is made
    key, created = host_key(host_key_path or DEFAULT_HOST_KEY)
    source = log or site_log()
    result = export_log(source, out, key=key, gather=_gather(prefixes))
    check = result.references
    if check is not None and check.problems:
        error = check.error(str(source))
        raise IntegrityError(f"{error.message}; exported anyway to {out}, whose signed header records it",
                             subject=error.subject)
    made = f"made host key {key.path} (public: {key.public_path}); " if created else ""
    emit(as_json, {"out": str(out), "log": str(source), "host_key_created": created,
                   "pubkey": str(key.public_path), **result.to_dict(),
                   "references": check.to_dict() if check else None}, [
        f"exported {result.log.lines} line(s) of {source} to {out}, head {result.log.head}",
        *_reference_lines(check),
        f"{made}signed by host key {key.public.keyid[:16]}; check it with "
        f"`gapship audit verify --export {out.name} --pubkey HOST.pub`",
    ])


@audit_group.command(name="seal")
@click.option("--log", type=click.Path(path_type=Path),
              help=f"The audit log to seal (default: the site's, {DEFAULT_LOG} "
              "unless the site file's audit_log names another).")
@json_option
def seal_command(log: Path | None, as_json: bool) -> None:
    """Seal a torn or damaged last line so the log can be appended to again: its bytes stay, a record names their hash."""
    path = log or site_log()
    result = seal_log(path)
    if result.line is None:
        lines = [f"OK {path}: its last line is a complete record; nothing to seal"]
    else:
        lines = [f"sealed line {result.line} of {path} ({result.size} bytes, {result.sha256}) with record "
                 f"{result.record.seq if result.record else '?'}; the bytes stay in the log"]
    emit(as_json, {"log": str(path), **result.to_dict()}, lines)
