"""``--hf-cache DIR`` (and the site file's ``hf_cache``) for ``install``, ``prune`` and ``remove``:
which Hugging Face cache to publish into, and what to say about it (docs/huggingface.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..deploy.install import locked
from ..host.hfcache import Published, publish
from ._host import HostContext

F = TypeVar("F", bound=Callable[..., Any])


def hf_cache_option(f: F) -> F:
    return click.option(
        "--hf-cache", "hf_cache", type=click.Path(path_type=Path), default=None,
        help="Publish the active version's models into this Hugging Face cache, by repo id, as links to the "
             "installed files (default: the site file's hf_cache; none without one).")(f)


def chosen_cache(option: Path | None, host: HostContext) -> Path | None:
    """``--hf-cache``, else the site file's ``hf_cache``, else None (nothing is published)."""
    if option is not None:
        return option
    if host.site is not None and host.site.hf_cache is not None:
        return Path(host.site.hf_cache)
    return None


def published_lines(published: Published | None) -> list[str]:
    if published is None:
        return []
    lines = [f"published {e.repo} ({len(e.files)} files, snapshot {e.commit[:12]}) in {published.hf_cache}"
             for e in published.entries]
    lines += [f"unpublished {repo} from {published.hf_cache}" for repo in published.removed]
    return lines


def publish_locked(cache: Path, prefix: Path, name: str) -> Published:
    """:func:`~gapship.installer.host.hfcache.publish` under the bundle name's install lock, so that
    it reads the ``current`` an install or removal left, not one being switched."""
    home = prefix / name
    if not home.is_dir():
        return publish(cache, home=home, bundle=name)
    with locked(home):
        return publish(cache, home=home, bundle=name)
