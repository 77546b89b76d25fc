"""The host side of a disconnected-side command: site file, site authorizations and audit log, added
to a click command by one decorator, :func:`host_options` (docs/safeguards.md).

The decisions themselves are library code: the site decision is
:func:`~gapship.installer.safeguards.decide_for_site`, the audit record's schema
:func:`~gapship.installer.host.audit.decision_record`. The decorator adds ``--site-config``, ``--authorization`` and ``--audit-log``, hands the command one
:class:`HostContext`, and appends exactly one audit record when the command ends, accepted or refused,
whatever raised. Commands tell it what they learnt with :meth:`HostContext.note` (the verified manifest)
and :meth:`HostContext.decide` (the site decision).

Where the log goes: on a site host (``--site-config`` given, anything at ``/etc/gapship/site.toml``,
even a broken file, or an install into a prefix marked as a site's) always the site's log,
:data:`~gapship.installer.host.audit.DEFAULT_LOG` or the path the site file's ``audit_log`` names
(a broken site file: the default, which records the refusal), and also ``--audit-log FILE`` if given
(an extra log never takes a command off the site's record); elsewhere ``--audit-log FILE`` if given, else nowhere (a
developer machine or a transfer host is not a site, and ``verify`` there must not need root). Every
log is opened, and its tail checked, before the command does anything.

An install that makes a version visible first appends an intent record (:meth:`HostContext.intent`,
called by the install before anything becomes visible); the outcome record then names it. If the
outcome cannot be appended after a successful install, the intent already records it: the command
warns and succeeds.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..host import audit
from ..formats import site as site_module
from ..errors import GapshipError, UsageError
from ..formats.site import Site
from ..trust import VerifiedManifest
from .group import warn

if TYPE_CHECKING:  # imported where used: only a site host needs it (and packaging.specifiers with it)
    from ..deploy.install import Intent
    from ..deploy.prune import Removal
    from ..safeguards import SiteDecision

F = TypeVar("F", bound=Callable[..., Any])
_QUIET_PARAMS = {"as_json", "progress"}


@dataclass
class HostContext:
    command: str
    site_config: Path | None
    authorization_paths: tuple[Path, ...]
    log: audit.Journal | None
    site: Site | None = None
    verified: VerifiedManifest | None = None
    decision: SiteDecision | None = None
    params: dict[str, object] = field(default_factory=dict)

    def note(self, verified: VerifiedManifest) -> VerifiedManifest:
        """Record the verified bundle for the audit line; return it unchanged."""
        self.verified = verified
        return verified

    def decide(self, bundle: Path, verified: VerifiedManifest, *, trust_dir: Path) -> SiteDecision | None:
        """Enforce the bundle's policy for this site (None when the host is not a site)."""
        if self.site is None:
            if self.authorization_paths:
                raise UsageError("--authorization needs a site file (--site-config or /etc/gapship/site.toml)")
            return None
        from ..safeguards import decide_for_site  # a site host only (packaging.specifiers with it)

        self.decision = decide_for_site(bundle, verified, site=self.site, trust_dir=trust_dir,
                                        authorization_paths=self.authorization_paths)
        return self.decision

    def summary(self) -> dict[str, object] | None:
        return self.decision.summary() if self.decision else None

    def lines(self) -> list[str]:
        """Human lines about the site decision, for the command's text output."""
        d = self.decision
        if d is None:
            return []
        out = [f"site {d.site.site_id}: allowed; safeguards required: {', '.join(d.required) or 'none'}",
               f"models installed: {', '.join(d.enabled) or 'none'}"
               + (f"; not enabled here, left out: {', '.join(d.skipped)}" if d.skipped else "")]
        out += [f"authorization {a.digest[:23]} expires {a.authorization.expires}" for a in d.authorizations]
        return out

    def record(self, decision: str, reason: dict[str, object]) -> dict[str, object]:
        return audit.decision_record(command=self.command, params=self.params, verified=self.verified,
                                     site=self.site, decision=self.decision, outcome=decision, reason=reason)

    def intent(self, intent: Intent) -> tuple[audit.AuditRef, ...]:
        """Append the install's intent record to every log, durably; return where it landed (the
        receipt and the host state keep it). No log: nothing to return."""
        if self.log is None:
            return ()
        record = self.record("intent", {"code": None, "kind": "intent", "message": intent.message})
        return self.log.intent({**record, "install": intent.to_dict()})

    def removal(self, removal: Removal) -> tuple[audit.AuditRef, ...]:
        """Append a removal's intent record (``remove``, ``prune``) to every log, durably, before the
        version directory is touched (installer/deploy/prune.py)."""
        if self.log is None:
            return ()
        record = self.record("intent", {"code": None, "kind": "intent", "message": removal.message})
        return self.log.intent({**record, "remove": removal.to_dict()})


_OPTIONS = (
    click.option("--site-config", type=click.Path(path_type=Path, readable=False),  # the kit says why, on the log
                 help="This host's site file (default: /etc/gapship/site.toml when it exists)."),
    click.option("--authorization", "authorization_paths", multiple=True, type=click.Path(path_type=Path),
                 help="A site authorization directory (repeatable); the bundle's authorizations/ are read too."),
    click.option("--audit-log", type=click.Path(path_type=Path),
                 help="Also append the audit records here (a site host always writes its site log, "
                      "default /var/log/gapship/audit.jsonl)."),
)


def host_options(f: F) -> F:
    """Add ``--site-config``, ``--authorization`` and ``--audit-log`` to a command, pass it ``host``,
    and append one audit record when it ends."""

    @functools.wraps(f)
    def run(*args: Any, site_config: Path | None, authorization_paths: tuple[Path, ...],
            audit_log: Path | None, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        site_host = site_config is not None or site_module.site_file_present() or _marked(kwargs.get("prefix"))
        # The site file is read first only to learn where the site's log is; a broken one is refused
        # below, once the default log is open to record that refusal.
        site: Site | None = None
        broken: GapshipError | None = None
        try:
            site = site_module.load_site(site_config)
        except GapshipError as e:
            broken = e
        site_log = site.audit_log if site is not None and site.audit_log is not None else audit.DEFAULT_LOG
        log = _open_logs(site_log if site_host else None, audit_log)  # before anything else: no log, no action
        host = HostContext(command=ctx.command_path.partition(" ")[2] or ctx.info_name or "?",
                           site_config=site_config, authorization_paths=authorization_paths, log=log,
                           params=_params(ctx.params))
        try:
            if broken is not None:
                raise broken
            host.site = site
            result = f(*args, host=host, **kwargs)
        except GapshipError as e:
            try:
                _finish(host, "refused", e.to_dict())
            except GapshipError as lost:  # keep the refusal's own message; say the record is missing
                e.hint = f"and no audit record was written: {lost.message}"
            raise
        except click.exceptions.Exit as e:
            _finish(host, "accepted" if e.exit_code == 0 else "refused", {"code": e.exit_code, "kind": "exit"})
            raise
        except BaseException as e:
            kind = "interrupted" if isinstance(e, KeyboardInterrupt) else "internal"
            _finish(host, "refused", {"code": 1, "kind": kind, "message": f"{type(e).__name__}: {e}"})
            raise
        try:
            _finish(host, "accepted", {"code": 0, "kind": "ok", "message": f"{host.command} completed"})
        except GapshipError as lost:
            if host.log is None or not host.log.intents:
                raise
            where = ", ".join(f"{r.log} line {r.seq}" for r in host.log.intents)
            warn(f"{lost.message}; the install is on record by its intent record ({where})")
        return result

    for option in reversed(_OPTIONS):
        run = option(run)
    return run  # type: ignore[return-value]


def _marked(prefix: object) -> bool:
    """A prefix once installed as a site stays one (host/sitemark.py): its installs are logged even
    when the site file is gone, and refused by the install itself."""
    if not isinstance(prefix, Path):
        return False
    from ..host.sitemark import marker_path  # install only

    return os.path.lexists(marker_path(prefix))


def site_log() -> Path:
    """The site's log (:func:`~gapship.installer.formats.site.site_log`), default
    :data:`~gapship.installer.host.audit.DEFAULT_LOG`."""
    return site_module.site_log(audit.DEFAULT_LOG)


def _open_logs(site_log: Path | None, extra: Path | None) -> audit.Journal | None:
    """The site's log on a site host, plus ``--audit-log``; None when there is neither."""
    paths = ([site_log] if site_log is not None else []) + ([extra] if extra is not None else [])
    return audit.Journal.open(paths) if paths else None


def _finish(host: HostContext, decision: str, reason: dict[str, object]) -> None:
    if host.log is None:
        return
    try:
        host.log.append(host.record(decision, reason))
    finally:
        host.log.close()


def _params(params: dict[str, Any]) -> dict[str, object]:
    """The command's arguments, for the audit line (paths as given)."""
    out: dict[str, object] = {}
    for name, value in sorted(params.items()):
        if name in _QUIET_PARAMS or value is None or value == ():
            continue
        out[name] = [str(v) for v in value] if isinstance(value, tuple) else (
            value if isinstance(value, (bool, int)) else str(value))
    return out
