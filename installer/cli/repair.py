"""``gapship repair``: rebuild lost or damaged chunks from the bundle's parity chunks (docs/cli.md,
docs/format.md section 12). Needs zfec (``gapship[parity]``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..bundle.files import read_raw_bundle
from ..bundle.parity import load_parity
from ..bundle.repair import NotWhole, repair as repair_bundle
from ..errors import IntegrityError
from ..trust import TrustStore, verify_manifest
from .group import bundle_argument, cli, emit, output_options, progress_bar, trust_option


@cli.command()
@bundle_argument
@trust_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Leave BUNDLE as it is (e.g. read-only media) and write the repaired bundle to this new "
                   "directory: good chunks hard-linked (or copied), rebuilt ones written.")
@output_options
def repair(bundle: Path, trust_dir: Path, out: Path | None, as_json: bool, progress: bool | None) -> None:
    """Rebuild BUNDLE's missing or damaged chunks (data and parity) from its parity chunks, each checked
    against its signed hash before it is written. Exit 0 when the bundle is whole afterwards, 3 when not."""
    trust = TrustStore.from_dir(trust_dir)
    verified = verify_manifest(read_raw_bundle(bundle), trust=trust)
    parity = load_parity(bundle, verified)
    if parity is None:
        raise IntegrityError(f"{bundle} has no parity/: nothing to repair from", subject="parity")
    with progress_bar(verified.manifest.payload_size, "repair", progress) as bar:
        result = repair_bundle(bundle, verified, parity, out=out, progress=bar)
    if not result.whole:
        raise NotWhole(result)
    m = verified.manifest
    emit(as_json, result.to_dict(), [
        *(f"rebuilt {name}" for name in result.rebuilt),
        f"OK {m.name} {m.version} at {result.out} is whole: {len(result.rebuilt)} chunk(s) rebuilt",
    ])
