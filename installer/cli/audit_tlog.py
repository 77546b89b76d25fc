"""``gapship audit append`` and ``gapship audit checkpoint``, and the transparency-log side of ``audit
export --since`` and ``audit verify --export --since`` (docs/audit.md; docs/cli.md, section 13).

Thin: options in, one library call (installer/host/tlog.py), lines or ``--json`` out. ``audit append``
is the serving stack's command and runs at serving rates, so this module imports little at the top:
signing keys (nacl, cryptography) only when a checkpoint is to be signed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import UsageError
from ..formats.site import site_log
from ..host.tlog import TransparencyLog
from .audit import audit_group
from .fast import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY_MS
from .group import emit, json_option, warn

if TYPE_CHECKING:
    from ..formats.note import NoteSigner
    from ..kit import Refusal

DEFAULT_LOG = Path("/var/log/gapship/audit.jsonl")  # installer/host/audit.py's, without importing it
DEFAULT_HOST_KEY = Path("/var/lib/gapship/host.key")
DEFAULT_PQ_HOST_KEY = Path("/var/lib/gapship/host-ml-dsa-87.key")


def requires_ml_dsa(trust_dir: Path) -> bool:
    """Whether the site's trust root requires ML-DSA-87 of any role (``require_algorithms``,
    docs/trust.md): then its checkpoints are signed with ML-DSA-87 too."""
    from ..crypto.keys import ML_DSA_87
    from ..trust import TrustStore

    store = TrustStore.from_dir(trust_dir)
    return not store.legacy and any(ML_DSA_87 in role.require_algorithms for role in store.root.roles.values())


def signers(log: TransparencyLog, host_key_path: Path | None, pq_key_path: Path | None,
            trust_dir: Path | None = None) -> tuple[list[NoteSigner], list[str]]:
    """The checkpoint's signers: the host key (made at first use), and an ML-DSA-87 key if asked for,
    or if the trust root in ``trust_dir`` requires it (then by default :data:`DEFAULT_PQ_HOST_KEY`).
    Also the lines that say which keys were made."""
    from ..formats.note import NoteSigner
    from ..host.audit import host_key
    from ..host.pqkey import ml_dsa_host_key

    if pq_key_path is None and trust_dir is not None and requires_ml_dsa(trust_dir):
        pq_key_path = DEFAULT_PQ_HOST_KEY
    made: list[str] = []
    key, created = host_key(host_key_path or DEFAULT_HOST_KEY)
    if created:
        made.append(f"made host key {key.path} (public: {key.public_path})")
    out = [NoteSigner(name=log.origin, public=key.public, sign=key.sign)]
    if pq_key_path is not None:
        pq, pq_created = ml_dsa_host_key(pq_key_path)
        if pq_created:
            made.append(f"made ML-DSA-87 host key {pq.path} (public: {pq.public_path})")
        out.append(NoteSigner(name=log.origin, public=pq.public, sign=pq.sign))
    return out, made


_LOG_OPTION = click.option("--log", type=click.Path(path_type=Path),
                           help=f"The transparency log (default: the site's log, {DEFAULT_LOG} unless the site "
                                "file's audit_log names another).")
_HOST_KEY_OPTION = click.option("--host-key", "host_key_path", type=click.Path(path_type=Path),
                                help=f"The host's Ed25519 signing key, made at first use (default: {DEFAULT_HOST_KEY}).")
_PQ_KEY_OPTION = click.option("--pq-host-key", "pq_key_path", type=click.Path(path_type=Path),
                              help="Also sign with this ML-DSA-87 key (made at first use).")
_TRUST_OPTION = click.option("--trust", "trust_dir", type=click.Path(path_type=Path),
                             help="The site's trust directory: if its root requires ML-DSA-87, sign with an "
                                  f"ML-DSA-87 key too (--pq-host-key, default {DEFAULT_PQ_HOST_KEY}).")


@audit_group.command(name="append")
@_LOG_OPTION
@click.option("--max-batch", type=click.IntRange(1, 1 << 20), default=DEFAULT_MAX_BATCH, show_default=True,
              help="At most this many records per batch (one sync each).")
@click.option("--max-delay", "max_delay_ms", type=click.FloatRange(0, 60_000), default=DEFAULT_MAX_DELAY_MS,
              show_default=True,
              help="Latency bound in milliseconds: a batch is cut at most this long after its first record "
                   "was read (encoding, writing and syncing it come on top).")
@click.option("--ack", is_flag=True, help="Print `ack FIRST LAST` on stdout after each durable batch (sequence numbers).")
@click.option("--checkpoint-every", type=click.IntRange(1), help="Sign a checkpoint every N records.")
@click.option("--checkpoint-interval", type=click.FloatRange(0, min_open=True),
              help="Sign a checkpoint when this many seconds have passed since the last one.")
@_HOST_KEY_OPTION
@_PQ_KEY_OPTION
@_TRUST_OPTION
@json_option
def append_command(log: Path | None, max_batch: int, max_delay_ms: float, ack: bool, checkpoint_every: int | None,
                   checkpoint_interval: float | None, host_key_path: Path | None, pq_key_path: Path | None,
                   trust_dir: Path | None, as_json: bool) -> None:
    """Append one JSON record per line of stdin to the transparency log, in durable batches (group commit).

    A line that is not a JSON object, is over 64 KiB or nests too deeply is refused on its own (a
    warning names it) and the others are appended; the command then exits 2."""
    from .fast import AppendOptions, run_append

    payload, lines = run_append(AppendOptions(
        log=log, max_batch=max_batch, max_delay=max_delay_ms / 1000, ack=ack,
        checkpoint_every=checkpoint_every, checkpoint_interval=checkpoint_interval, host_key=host_key_path,
        pq_host_key=pq_key_path, trust=trust_dir, as_json=as_json), warn=warn)
    emit(as_json, payload, lines)


@audit_group.command(name="checkpoint")
@_LOG_OPTION
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Where to write the signed checkpoint.")
@_HOST_KEY_OPTION
@_PQ_KEY_OPTION
@_TRUST_OPTION
@click.option("--rebuild-store", is_flag=True,
              help="First rebuild the node store (LOG.tree/) from the records, then check and sign: the repair "
                   "when the check finds the store does not match them.")
@json_option
def checkpoint_command(log: Path | None, out: Path, host_key_path: Path | None, pq_key_path: Path | None,
                       trust_dir: Path | None, rebuild_store: bool, as_json: bool) -> None:
    """Sign a checkpoint of the transparency log (C2SP tlog-checkpoint: origin, size, root hash).

    The node store is first checked against the records since the last checkpoint this host signed
    (the whole tree for the first), and the tree against that checkpoint: a mismatch exits 3 and
    nothing is signed."""
    from ..host.atomic import atomic_write

    path = log or site_log(DEFAULT_LOG)
    _check_out(out)
    with TransparencyLog.open(path) as tlog:
        keys, made = signers(tlog, host_key_path, pq_key_path, trust_dir)
        cp, note = tlog.checkpoint(keys, rebuild=rebuild_store)
        check = tlog.last_check
    assert check is not None
    atomic_write(out, note)
    from ..host.tlog_export import b64

    checked = (f"checked records {check.since + 1}..{check.size} against the node store"
               if check.size > check.since else "no records since it")
    lines = [f"rebuilt the node store of {path} from its {check.size} record(s)"] if check.rebuilt else []
    if check.source:
        lines.append(f"{checked}; the tree is consistent with the checkpoint of size {check.since} this host "
                     f"signed ({check.source})" + (": the rebuild made the store consistent" if check.rebuilt else ""))
    else:
        lines.append(f"no earlier checkpoint by this host: checked the whole tree ({check.size} record(s)) against "
                     "the records" + (": the rebuilt store matches them" if check.rebuilt else ""))
    emit(as_json, {"log": str(path), "out": str(out), "origin": cp.origin, "size": cp.size, "root": b64(cp.root),
                   "algorithms": [k.public.algorithm for k in keys], "checked_from": check.since,
                   "consistent_with": check.source or None, "rebuilt": check.rebuilt},
         [*made, *lines, f"checkpoint of {path}: {cp.size} record(s), root {b64(cp.root)}, signed by "
          f"{', '.join(k.public.algorithm for k in keys)}; written to {out}"])


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out} exists; refusing to overwrite it", subject=str(out))
    if not out.parent.is_dir():
        raise UsageError(f"the folder of {out} does not exist", subject=str(out))


def export_since_command(path: Path, since_path: Path, out: Path, host_key_path: Path | None,
                         pq_key_path: Path | None, trust_dir: Path | None, as_json: bool) -> None:
    """``gapship audit export --since CHECKPOINT``: the records after it, compressed, with a new signed
    checkpoint and the consistency proof from it."""
    import socket

    from ..host.audit import now_utc
    from ..host.tlog_export import check_since, export_since, read_checkpoint_file

    _check_out(out)
    since_note = read_checkpoint_file(since_path, what="checkpoint")
    with TransparencyLog.open(path, create=False) as tlog:
        keys, made = signers(tlog, host_key_path, pq_key_path, trust_dir)
        since = check_since(tlog, since_note, [(k.name, k.public) for k in keys], source=str(since_path))
        result = export_since(tlog, since, out, signers=keys, host=socket.gethostname(), exported_at=now_utc())
    emit(as_json, {"out": str(out), "log": str(path), **result.to_dict()}, [
        *made,
        f"exported records {since.size + 1}..{result.checkpoint.size} of {path} ({result.records} record(s)) to {out}",
        f"since checkpoint {since_path} (size {since.size}), with the consistency proof to the new checkpoint "
        f"(size {result.checkpoint.size}) and {result.checkpoints} checkpoint(s) between",
        f"check it with `gapship audit verify --export {out.name} --pubkey HOST.pub --since {since_path.name}`",
    ])


def verify_since_command(export_file: Path, pubkey_path: Path, since_path: Path, save: Path | None,
                         as_json: bool) -> None:
    """``gapship audit verify --export FILE --pubkey HOST.pub --since CHECKPOINT``."""
    from ..crypto.keys import MAX_KEY_FILE_BYTES, PublicKey
    from ..host.atomic import atomic_write
    from ..host.tlog_export import read_checkpoint_file, verify_export_since
    from ..kit import read_bounded

    if save is not None:
        _check_out(save)
    key = PublicKey.from_pem(read_bounded(pubkey_path, cap=MAX_KEY_FILE_BYTES, refuse=_refuse_key,
                                          follow_symlinks=True), source=str(pubkey_path))
    since_note = read_checkpoint_file(since_path, what="checkpoint")
    check = verify_export_since(export_file, since_note, key, since_source=str(since_path))
    if save is not None:
        atomic_write(save, check.checkpoint_note)
    cp = check.checkpoint
    emit(as_json, {"export": str(export_file), "since": str(since_path), "saved": str(save) if save else None,
                   **check.to_dict()}, [
        f"OK {export_file}: checkpoint of {cp.origin} signed by key {key.keyid[:16]} ({key.algorithm})",
        f"OK consistent with the accepted checkpoint {since_path} (size {check.since.size}): nothing before it "
        "was cut, rewritten or forked",
        f"OK records {check.since.size + 1}..{cp.size} ({check.records}) hash to the signed root"
        + (f", and to the {check.checkpoints} checkpoint(s) between" if check.checkpoints else ""),
        *([f"saved the new checkpoint to {save}: give it as --since next time"] if save else []),
    ])


def check_since_options(since: Path | None, others: Sequence[object]) -> None:
    if since is not None and any(others):
        raise UsageError("--since goes with --log, --out and --host-key (a transparency-log export), not --prefix")


def _refuse_key(r: Refusal) -> Exception:
    if r.reason == "missing":
        return UsageError(f"public key {str(r.path)!r} does not exist", subject=str(r.path))
    return UsageError(f"cannot read public key {r.path}: {r.strerror or r.reason}", subject=str(r.path))
