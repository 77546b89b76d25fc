"""``gapship remove``: remove one installed version, never ``current``, under the install lock and on
the audit record (installer/deploy/prune.py; docs/cli.md, docs/site-admin.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..deploy.prune import remove as remove_version
from ..host.state import HostState
from ._hf import chosen_cache, hf_cache_option, publish_locked, published_lines
from ._host import HostContext, host_options
from .group import cli, emit, json_option


@cli.command()
@click.option("--prefix", required=True, type=click.Path(path_type=Path), help="Install root.")
@click.argument("name")
@click.argument("version")
@hf_cache_option
@json_option
@host_options
def remove(prefix: Path, name: str, version: str, hf_cache: Path | None, as_json: bool,
           host: HostContext) -> None:
    """Remove PREFIX/NAME/VERSION. Refuses (exit 5) the current version, a directory without a receipt,
    and a version above the host state's anti-rollback floor; the floor stays where it was. Files a
    later version shares with it stay with that version. With --hf-cache (or the site file's hf_cache),
    the bundle's published models are brought in line."""
    result = remove_version(prefix, name, version, state=HostState.for_prefix(prefix), record=host.removal)
    cache = chosen_cache(hf_cache, host)
    published = publish_locked(cache, prefix, name) if cache is not None else None
    emit(as_json, {**result.to_dict(), "hf_cache": published.to_dict() if published else None}, [
        f"removed {name} {version} from {prefix}",
        f"kept: {', '.join(v for _, v in result.kept) or 'none'}",
        *published_lines(published),
    ])
