"""``gapship pull oci://... --trust TRUSTDIR --out DIR``: write the artifact as a bundle directory,
each chunk checked against the signed manifest as it lands; a rerun fetches only what is missing or
bad (docs/cli.md section 19, docs/oci.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..oci.reference import parse_reference
from ..oci.transfer import pull as pull_bundle
from ..trust import TrustStore
from ._oci import RegistryOptions, registry_options
from .group import cli, emit, human_size, output_options, progress_bar, signer_names, trust_option


@cli.command()
@click.argument("reference", metavar="oci://HOST[:PORT]/REPO:TAG")
@trust_option
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="The bundle directory to write (or to resume).")
@output_options
@registry_options
def pull(reference: str, trust_dir: Path, out: Path, as_json: bool, progress: bool | None,
         registry: RegistryOptions) -> None:
    """Pull an artifact into the bundle directory --out: its signatures are checked against the trust
    directory first, then every chunk as it lands. Rerun to resume: good chunks are kept."""
    ref = parse_reference(reference)
    trust = TrustStore.from_dir(trust_dir)
    client = registry.client(ref)
    with progress_bar(0, "pull", progress) as bar:
        result = pull_bundle(client, out, trust=trust, jobs=registry.jobs, progress=bar)
    m = result.verified.manifest
    emit(as_json, {**result.to_dict(), "out": str(out)}, [
        f"pulled {m.name} {m.version} from {ref} into {out}: {result.fetched} of {result.chunks} chunk(s) fetched "
        f"({human_size(result.bytes_fetched)}), {result.kept} already there",
        f"signed by {signer_names(result.verified.trust or trust, result.verified.signers)}; artifact {result.digest}",
    ])
