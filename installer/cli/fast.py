"""``gapship audit append`` without click: the serving stack's command starts in a few milliseconds
(docs/audit.md, "Throughput").

The entry points (bundler/cli/main.py, installer/__main__.py) hand a command line that starts with
``audit append`` to :func:`main_append` first. It takes only the options of docs/cli.md section 13.4,
in their plain spellings; anything else (``--help``, a typo, a bad number) returns None and the click
command (installer/cli/audit_tlog.py) parses the line instead, with its usual messages. Both run
:func:`run_append`. Errors are reported as the click group reports them (one line, or ``--json``),
through its escaping: installer/cli/group.py is imported only then.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import GapshipError, UsageError

DEFAULT_LOG = Path("/var/log/gapship/audit.jsonl")  # installer/host/audit.py's
DEFAULT_MAX_BATCH = 8192
DEFAULT_MAX_DELAY_MS = 10.0


@dataclass
class AppendOptions:
    log: Path | None = None  # None: the site's log (the site file's audit_log, else DEFAULT_LOG)
    max_batch: int = DEFAULT_MAX_BATCH
    max_delay: float = DEFAULT_MAX_DELAY_MS / 1000
    ack: bool = False
    checkpoint_every: int | None = None
    checkpoint_interval: float | None = None
    host_key: Path | None = None
    pq_host_key: Path | None = None
    trust: Path | None = None
    as_json: bool = False


_VALUED = {"--log", "--max-batch", "--max-delay", "--checkpoint-every", "--checkpoint-interval", "--host-key",
           "--pq-host-key", "--trust"}


def parse_append_args(argv: Sequence[str]) -> AppendOptions | None:
    """The options of ``audit append`` (after those two words), or None to let click parse them."""
    o = AppendOptions()
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in ("--ack", "--json") and not eq:
            setattr(o, "ack" if name == "--ack" else "as_json", True)
            continue
        if name not in _VALUED:
            return None
        if not eq:
            if not args:
                return None
            value = args.pop(0)
        try:
            _set(o, name, value)
        except ValueError:
            return None
    return o


def _set(o: AppendOptions, name: str, value: str) -> None:
    if name == "--log":
        o.log = Path(value)
    elif name == "--max-batch":
        o.max_batch = int(value)
        if not 1 <= o.max_batch <= 1 << 20:
            raise ValueError
    elif name == "--max-delay":
        ms = float(value)
        if not 0 <= ms <= 60_000:
            raise ValueError
        o.max_delay = ms / 1000
    elif name == "--checkpoint-every":
        o.checkpoint_every = int(value)
        if o.checkpoint_every < 1:
            raise ValueError
    elif name == "--checkpoint-interval":
        o.checkpoint_interval = float(value)
        if not o.checkpoint_interval > 0:
            raise ValueError
    elif name == "--host-key":
        o.host_key = Path(value)
    elif name == "--trust":
        o.trust = Path(value)
    else:
        o.pq_host_key = Path(value)
    if not value:
        raise ValueError


Warn = Callable[[str], None]


def run_append(o: AppendOptions, *, warn: Warn) -> tuple[dict[str, Any], list[str]]:
    """Append stdin to the log; return the ``--json`` payload and the text lines, or raise (a refused
    line makes it raise UsageError at the end, after the others were appended)."""
    from ..host.tlog import Commit, TransparencyLog, append_stream

    def acknowledge(c: Commit) -> None:
        _emit_line(f"ack {c.first + 1} {c.first + c.count}", flush=True)

    if o.log is None:
        from ..formats.site import site_log

        o.log = site_log(DEFAULT_LOG)
    with TransparencyLog.open(o.log) as log:
        if log.recovery.torn_bytes:
            warn(f"{o.log}: cut off a torn tail of {log.recovery.torn_bytes} byte(s) that no append had acknowledged")
        hooks: list[Callable[[Commit], None]] = []
        auto = None
        if o.checkpoint_every is not None or o.checkpoint_interval is not None:
            from ..host.tlog import AutoCheckpoint
            from .audit_tlog import signers

            keys, made = signers(log, o.host_key, o.pq_host_key, o.trust)
            for line in made:
                warn(line)
            auto = AutoCheckpoint(log, keys, every=o.checkpoint_every, interval=o.checkpoint_interval)
            hooks.append(auto)
        if o.ack:
            hooks.append(acknowledge)

        def on_commit(c: Commit) -> None:
            for hook in hooks:
                hook(c)

        summary = append_stream(log, _stdin(), max_batch=o.max_batch, max_delay=o.max_delay,
                                on_commit=on_commit if hooks else None,
                                on_refused=lambda n, why: warn(f"stdin line {n} refused: it {why}"))
        summary.checkpoints = auto.made if auto else 0
    if summary.first_refused is not None:
        n, why = summary.first_refused
        raise UsageError(f"{summary.refused} line(s) of stdin refused, the first line {n}: it {why}; "
                         f"the other {summary.appended} record(s) were appended", subject=f"stdin line {n}")
    return {"log": str(o.log), **summary.to_dict()}, [
        f"appended {summary.appended} record(s) to {o.log} in {summary.batches} durable batch(es); "
        f"the tree has {summary.size} record(s)"]


def _stdin() -> int | BinaryIO:
    """Standard input as a descriptor, or, where it has none (click's test runner), as a file."""
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stdin.buffer


def _safe(text: str, *, backslashes: bool = True) -> str:
    if text.isprintable() and "\\" not in text:
        return text
    from .group import escape  # the one escaping of human text (imports click: only for odd text)

    return escape(text, backslashes=backslashes)


def _emit_line(text: str, *, err: bool = False, backslashes: bool = True, flush: bool = False) -> None:
    """The fast path's one writer of human text, escaped as installer/cli/group.py's ``_write_line``."""
    stream = sys.stderr if err else sys.stdout
    stream.write(_safe(text, backslashes=backslashes) + "\n")
    if flush:
        stream.flush()


def _emit_json(payload: dict[str, Any]) -> None:
    """The fast path's one writer of ``--json``: one line, sorted keys, as group.py's ``_write_json``."""
    sys.stdout.write(json.dumps(payload, sort_keys=True) + "\n")


def _warn(text: str) -> None:
    _emit_line(f"gapship: warning: {text}", err=True)


def main_append(argv: Sequence[str]) -> int | None:
    """Run ``gapship audit append`` with ``argv`` (its options); return the exit code, or None when
    click must parse this command line."""
    o = parse_append_args(argv)
    if o is None:
        return None
    import gc

    # A process that streams records makes almost no cycles (a refused line's traceback does): collect
    # rarely rather than every 700 allocations, about 8% less CPU.
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)
    try:
        payload, lines = run_append(o, warn=_warn)
    except GapshipError as e:
        error = {**e.to_dict(), "message": _safe(e.message, backslashes=False),
                 "hint": _safe(e.hint, backslashes=False) if e.hint else e.hint}
        if o.as_json:
            _emit_json({**e.details(), "ok": False, "error": error})
        else:
            _emit_line(f"gapship: error: {e.message}", err=True, backslashes=False)
            if e.hint:
                _emit_line(f"gapship: hint: {e.hint}", err=True, backslashes=False)
        return e.exit_code
    except KeyboardInterrupt:
        _emit_line("gapship: error: interrupted", err=True)
        return 130
    if o.as_json:
        _emit_json({"ok": True, **payload})
    else:
        for line in lines:
            _emit_line(line)
    return 0


def dispatch(argv: Sequence[str]) -> None:
    """For the entry points: run ``audit append`` here when it is one, and exit; else return."""
    if len(argv) >= 2 and argv[0] == "audit" and argv[1] == "append":
        code = main_append(argv[2:])
        if code is not None:
            sys.stdout.flush()
            raise SystemExit(code)
