"""The mark a site leaves on its prefix: ``PREFIX/.gapship/site.json``
(docs/site-admin.md, "A prefix stays a site").

The site file says which site a host is; if it goes missing (deleted, a dangling link, a volume not
mounted), the host would silently stop being a site: no policy, no authorization, no audit record. So
the first install as a site writes the site's id beside the host state, and from then on every
install into that prefix must be made as that same site:

- no site file at all: refused (exit 5), naming the marker; restore the site file;
- a site file of another site id (``--site-config`` of another site, or a changed ``site_id``):
  refused (exit 5); a prefix belongs to one site. An admin who really moves a prefix to another
  site removes the marker by hand.

A marker that exists but cannot be read or parsed is refused (exit 7), never taken as "no marker".
The marker is written, atomically, just before ``current`` switches: a refused install leaves none.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from .atomic import atomic_write
from .state import STATE_DIR
from .strict import check_dir, make_dirs
from ..errors import HostError, PolicyError
from ..formats.policy import ID_RE
from ..formats.site import Site
from ..formats.timestamps import format_time
from ..kit import Fields, Refusal, canonical_json, parse_json, read_optional

MARKER = "site.json"
MARKER_FORMAT = "gapship-site-marker"
MAX_MARKER_BYTES = 64 * 1024
_FIELDS = Fields(HostError, prefix="site marker ")


def marker_path(prefix: Path) -> Path:
    return prefix / STATE_DIR / MARKER


def marked_site(prefix: Path) -> str | None:
    """The site id the prefix was marked with, or None when it carries no marker."""
    path = marker_path(prefix)

    def refuse(r: Refusal) -> Exception:
        return HostError(f"cannot read the site marker {path}: {r.strerror}", subject=str(path))

    data = read_optional(path, cap=MAX_MARKER_BYTES, refuse=refuse)
    if data is None:
        return None
    raw = parse_json(data, source=str(path), error=HostError)
    raw = _FIELDS.mapping(raw, str(path), required={"format", "format_version", "site_id", "marked_at", "source"})
    if raw["format"] != MARKER_FORMAT or raw["format_version"] != 1 or not isinstance(raw["site_id"], str) \
            or not ID_RE.fullmatch(raw["site_id"]):
        raise HostError(f"{path} is not a gapship site marker", subject=str(path))
    return raw["site_id"]


def check_site_marker(prefix: Path, site: Site | None) -> None:
    """Refuse an install into a marked prefix made without that site's file (module docstring)."""
    marked = marked_site(prefix)
    if marked is None or (site is not None and site.site_id == marked):
        return
    path = marker_path(prefix)
    if site is None:
        raise PolicyError(f"{prefix} belongs to site {marked!r} ({path}), but this install has no site file; "
                          "restore /etc/gapship/site.toml or pass --site-config", subject=str(path))
    raise PolicyError(f"{prefix} belongs to site {marked!r} ({path}), not to site {site.site_id!r} "
                      f"({site.source}); refusing to install for another site", subject=str(path))


def mark_site(prefix: Path, site: Site | None) -> None:
    """Make ``PREFIX/.gapship`` (0755) if needed and, for a site install, write the marker if there is
    none yet. Called just before ``current`` switches."""
    state_dir = prefix / STATE_DIR
    if not check_dir(state_dir, what="host state directory"):
        make_dirs(state_dir)
    if site is None or marked_site(prefix) is not None:
        return
    record = {"format": MARKER_FORMAT, "format_version": 1, "site_id": site.site_id,
              "marked_at": format_time(datetime.now(timezone.utc)), "source": site.source}
    atomic_write(marker_path(prefix), canonical_json(record) + b"\n")
