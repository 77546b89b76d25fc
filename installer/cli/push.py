"""``gapship push BUNDLE oci://HOST[:PORT]/REPO:TAG``: upload what the registry lacks, then the
artifact's manifest (docs/cli.md section 18, docs/oci.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..bundle.files import read_raw_bundle
from ..oci.reference import Reference, parse_reference
from ..oci.transfer import push as push_bundle
from ..trust import parse_unverified
from ._oci import RegistryOptions, registry_options
from .group import cli, emit, human_size, output_options, progress_bar


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("reference", metavar="oci://HOST[:PORT]/REPO:TAG")
@output_options
@registry_options
def push(bundle: Path, reference: str, as_json: bool, progress: bool | None, registry: RegistryOptions) -> None:
    """Push the bundle directory BUNDLE to a registry as an OCI artifact: only the blobs the registry
    lacks are sent, in parallel; prints the artifact's digest. Verifies nothing (run gapship verify
    first): every reader checks what it pulls against the signed manifest."""
    ref: Reference = parse_reference(reference)
    client = registry.client(ref)
    total = parse_unverified(read_raw_bundle(bundle)).payload_size
    try:
        with progress_bar(total, "push", progress) as bar:
            result = push_bundle(bundle, ref, client, jobs=registry.jobs, progress=bar)
    finally:
        client.close()
    emit(as_json, result.to_dict(), [
        f"pushed {bundle} to {result.reference}: {result.uploaded} of {result.blobs} blob(s) uploaded "
        f"({human_size(result.bytes_uploaded)}), {result.blobs - result.uploaded} already there",
        f"digest {result.digest}",
    ])
