"""``gapship parity``: add Reed-Solomon parity chunks to an existing bundle (docs/cli.md, docs/format.md
section 12). Needs zfec (``gapship[parity]``)."""

from __future__ import annotations

from pathlib import Path

import click

from ...installer.cli.group import bundle_argument, cli, emit, human_size, output_options, progress_bar
from ..keys import SigningKey
from ..parity import add_parity, parse_percent


@cli.command()
@bundle_argument
@click.option("--parity", "percent", required=True, help="Parity as a share of the data chunks, e.g. 10%.")
@click.option("--key", "key_files", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Release key that signs the parity layout (repeatable, as for build).")
@output_options
def parity(bundle: Path, percent: str, key_files: tuple[Path, ...], as_json: bool, progress: bool | None) -> None:
    """Compute parity chunks for BUNDLE into BUNDLE/parity/ with a signed layout; manifest.json is not
    changed. Each chunk is checked against the manifest as it is read."""
    share = parse_percent(percent)
    keys = [SigningKey.load(k) for k in key_files]
    with progress_bar(0, "parity", progress) as bar:
        result = add_parity(bundle, share=share, keys=keys, progress=bar)
    lay = result.layout
    emit(as_json, result.to_dict(), [
        f"added {len(lay.parity)} parity chunk(s) ({human_size(len(lay.parity) * lay.chunk_size)}) to "
        f"{lay.name} {lay.version}: {len(lay.groups)} group(s) of up to {max(g.k for g in lay.groups)} chunks, "
        f"{lay.groups[0].m} parity each",
        f"layout signed by {', '.join(k[:16] for k in result.signers)}",
    ])
