"""``gapship prune``: remove all but the newest installed versions, never ``current``, each under the
install lock and on the audit record (installer/deploy/prune.py; docs/cli.md, docs/site-admin.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..deploy.prune import prune as prune_versions
from ..host.state import HostState
from ._host import HostContext, host_options
from .group import cli, emit, json_option


@cli.command()
@click.option("--prefix", required=True, type=click.Path(path_type=Path), help="Install root.")
@click.option("--name", default=None, help="Only this bundle name (default: every bundle under PREFIX).")
@click.option("--keep", default=2, show_default=True, type=int,
              help="How many of the newest versions of each name to keep (current is always kept too).")
@json_option
@host_options
def prune(prefix: Path, name: str | None, keep: int, as_json: bool,
          host: HostContext) -> None:
    """Remove old versions under PREFIX: all but the KEEP newest of each bundle name and current.
    The anti-rollback floor stays where it was; files a kept version shares stay with it."""
    result = prune_versions(prefix, name=name, keep=keep, state=HostState.for_prefix(prefix), record=host.removal)
    emit(as_json, result.to_dict(), [
        *(f"removed {n} {v}" for n, v in result.removed),
        *([] if result.removed else ["nothing to remove"]),
        f"kept: {', '.join(f'{n} {v}' for n, v in result.kept) or 'none'}",
    ])
