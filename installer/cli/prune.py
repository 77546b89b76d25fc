"""``gapship prune``: remove all but the newest installed versions, never ``current``, each under the
install lock and on the audit record (installer/deploy/prune.py; docs/cli.md, docs/site-admin.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..deploy.prune import prune as prune_versions
from ..host.state import HostState
from ._hf import chosen_cache, hf_cache_option, publish_locked, published_lines
from ._host import HostContext, host_options
from .group import cli, emit, json_option


@cli.command()
@click.option("--prefix", required=True, type=click.Path(path_type=Path), help="Install root.")
@click.option("--name", default=None, help="Only this bundle name (default: every bundle under PREFIX).")
@click.option("--keep", default=2, show_default=True, type=int,
              help="How many of the newest versions of each name to keep (current is always kept too).")
@hf_cache_option
@json_option
@host_options
def prune(prefix: Path, name: str | None, keep: int, hf_cache: Path | None,
          as_json: bool, host: HostContext) -> None:
    """Remove old versions under PREFIX: all but the KEEP newest of each bundle name and current.
    The anti-rollback floor stays where it was; files a kept version shares stay with it. With
    --hf-cache (or the site file's hf_cache), each bundle's published models are brought in line."""
    result = prune_versions(prefix, name=name, keep=keep, state=HostState.for_prefix(prefix), record=host.removal)
    cache = chosen_cache(hf_cache, host)
    names = sorted({n for n, _ in (*result.removed, *result.kept)})
    published = [publish_locked(cache, prefix, n) for n in names] if cache is not None else []
    emit(as_json, {**result.to_dict(), "hf_cache": [p.to_dict() for p in published] if cache is not None else None}, [
        *(f"removed {n} {v}" for n, v in result.removed),
        *([] if result.removed else ["nothing to remove"]),
        f"kept: {', '.join(f'{n} {v}' for n, v in result.kept) or 'none'}",
        *(line for p in published for line in published_lines(p)),
    ])
