"""A host's site identity (docs/safeguards.md, "The site file"): a pure parser and validator.

``/etc/gapship/site.toml`` (or ``--site-config FILE``) says which site this host belongs to and which
safeguards are in place here::

    site_id = "agency-x"
    safeguards = ["inference-audit-log", "content-filter"]
    audit_log = "/srv/audit/gapship.jsonl"   # optional: the site's log (default /var/log/gapship/audit.jsonl)
    hf_cache = "/srv/hf-cache"   # optional: install's default --hf-cache (docs/huggingface.md)

Nothing else is accepted: an unknown key is more likely a typo (``safeguard = [...]``) than a feature,
and a typo in the file that decides what a host may install must not pass silently. The identifiers
follow the same patterns as the bundle's policy (:mod:`.policy`), so a site id or a safeguard that
could never match the policy is refused here already.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HostError, UsageError
from ..kit import Refusal, parse_toml, read_bounded
from .policy import CONTROL_RE, ID_RE

DEFAULT_SITE_CONFIG = Path("/etc/gapship/site.toml")
MAX_SITE_FILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Site:
    site_id: str
    safeguards: tuple[str, ...]  # in the order the file lists them
    source: str  # where it was read from, for messages, receipts and the audit log
    audit_log: Path | None = None  # the site's own log, when the file names one (absolute)
    hf_cache: str | None = None  # the default of --hf-cache (docs/huggingface.md)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"site_id": self.site_id, "safeguards": list(self.safeguards), "source": self.source}
        if self.audit_log is not None:
            out["audit_log"] = str(self.audit_log)
        return out


def parse_site(data: bytes, *, source: str) -> Site:
    """Parse and validate a site file; raise :class:`UsageError` naming the problem."""
    if len(data) > MAX_SITE_FILE_BYTES:
        raise UsageError(f"{source}: site file over {MAX_SITE_FILE_BYTES} bytes", subject=source)
    if not data.strip():
        raise UsageError(f"{source}: site file is empty (it needs site_id and safeguards)", subject=source)
    raw = parse_toml(data, source=source, error=UsageError)
    problem = _problem(raw)
    if problem:
        raise UsageError(f"{source}: {problem}", subject=source)
    log = raw.get("audit_log")
    return Site(site_id=raw["site_id"], safeguards=tuple(raw["safeguards"]), source=source,
                audit_log=Path(log) if log is not None else None, hf_cache=raw.get("hf_cache"))


def _problem(raw: dict[str, Any]) -> str | None:
    missing = sorted({"site_id", "safeguards"} - raw.keys())
    if missing:
        return f"site file lacks {', '.join(missing)}"
    unknown = sorted(raw.keys() - _KEYS)
    if unknown:
        return f"site file has unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_KEYS))})"
    hf_cache = raw.get("hf_cache")
    if hf_cache is not None and (not isinstance(hf_cache, str) or not hf_cache.startswith("/")
                                 or not hf_cache.isprintable()):
        return f"hf_cache {hf_cache!r} must be an absolute directory path"
    site_id, safeguards = raw["site_id"], raw["safeguards"]
    if not isinstance(site_id, str) or not ID_RE.fullmatch(site_id):
        return f"site_id {site_id!r} must be a string matching {ID_RE.pattern}"
    if not isinstance(safeguards, list):
        return "safeguards must be a list of strings (it may be empty)"
    for value in safeguards:
        if not isinstance(value, str) or not CONTROL_RE.fullmatch(value):
            return f"safeguards: {value!r} must be a string matching {CONTROL_RE.pattern}"
    if len(set(safeguards)) != len(safeguards):
        return "safeguards lists a value twice"
    return _log_problem(raw["audit_log"]) if "audit_log" in raw else None


_KEYS = {"site_id", "safeguards", "audit_log", "hf_cache"}


def _log_problem(log: object) -> str | None:
    """``audit_log`` must be an absolute, normalised path of a file: the site's record is not a place
    to be resolved against whichever directory a command happens to run in."""
    if not isinstance(log, str) or not log.startswith("/") or "\0" in log or "\n" in log:
        return f"audit_log {log!r} must be an absolute path"
    if log == "/" or log.endswith("/") or os.path.normpath(log) != log:
        return f"audit_log {log!r} must be a normalised path of a file (no '.', '..' or trailing '/')"
    return None


def load_site(path: Path | None) -> Site | None:
    """The site file at ``path`` (an explicit ``--site-config``: it must exist), or, when ``path`` is
    None, the default file if this host has one; None when the host is not a site.

    The host is not a site only when nothing at all is at the default path (:func:`site_file_present`):
    a dangling symlink, a symlink loop, a directory, a FIFO, a device, an unreadable, empty or invalid
    file there is refused like a bad ``--site-config``, never taken as "not a site" (docs/safeguards.md,
    "The site file"). The one read in this otherwise pure module, kept here because the CLI and the
    tests find the default path and this function on this module (``site_module.DEFAULT_SITE_CONFIG``);
    the reading itself is the kit's. A symlink is followed: the site file is the administrator's, often
    placed by configuration management, and whoever can plant a link there could write the file
    instead. A FIFO, device or directory is refused (a FIFO used to hang the command)."""
    if path is None:
        if not site_file_present():
            return None
        path = DEFAULT_SITE_CONFIG
    data = read_bounded(path, cap=MAX_SITE_FILE_BYTES, refuse=_refuse_site_file, follow_symlinks=True)
    return parse_site(data, source=str(path))


def site_file_present(path: Path | None = None) -> bool:
    """Whether anything is at the site file's path (default: :data:`DEFAULT_SITE_CONFIG`), usable or
    not. False only when the path provably holds nothing: ``lstat`` says it does not exist and no
    directory on the way is a dangling symlink (``/etc/gapship`` linked to an unmounted volume is a
    broken site configuration, not a host without one). Any other answer, a permission error on
    the way included, means "present": :func:`load_site` then reads it and says what is wrong."""
    path = DEFAULT_SITE_CONFIG if path is None else path
    try:
        os.lstat(path)
        return True
    except FileNotFoundError:
        return _dangling_on_the_way(path) is not None
    except OSError:  # ENOTDIR, ELOOP, EACCES on the way: something is there that cannot be seen past
        return True


def _dangling_on_the_way(path: Path) -> Path | None:
    """The nearest existing entry above a missing ``path``, if it is a symlink that leads nowhere."""
    for ancestor in path.parents:
        if os.path.lexists(ancestor):
            return ancestor if os.path.islink(ancestor) and not os.path.exists(ancestor) else None
    return None


def _refuse_site_file(r: Refusal) -> Exception:
    """Today's words for each way a site file cannot be read: usage (exit 2) for a missing or
    misplaced file, environment (exit 7) for one the host cannot read."""
    shown = str(r.path)
    if r.reason == "missing":
        return UsageError(f"site file {shown!r} {_why_missing(r.path)}", subject=shown)
    if r.kind == "directory":
        return UsageError(f"site file {shown!r} is a directory", subject=shown)
    if r.reason == "not-regular":
        return UsageError(f"site file {shown!r} {r.strerror}", subject=shown)
    if r.reason == "too-large":
        return UsageError(f"{shown}: site file over {MAX_SITE_FILE_BYTES} bytes", subject=shown)
    return HostError(f"cannot read site file {r.path}: {r.strerror}", subject=shown)


def _why_missing(path: Path) -> str:
    if os.path.islink(path):
        return f"is a symlink to {os.readlink(path)!r}, which does not exist"
    dangling = _dangling_on_the_way(path)
    if dangling is not None:
        return f"cannot be reached: {dangling} is a symlink to {os.readlink(dangling)!r}, which does not exist"
    return "does not exist"


def site_log(default: Path) -> Path:
    """The site's log for the commands that read or append to it without ``--log`` (``audit verify``,
    ``export``, ``seal``, ``append``, ``checkpoint``): the default site file's ``audit_log``, else
    ``default``. A broken site file is refused (exit 2 or 7): which log is the site's cannot be known."""
    site = load_site(None)
    return site.audit_log if site is not None and site.audit_log is not None else default
