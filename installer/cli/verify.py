"""``gapship verify``: signatures first, then every chunk (or only ``--chunk`` files), then, on a
site host, the bundle's site policy (docs/cli.md, docs/pipeline.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..bundle.files import read_raw_bundle
from ..bundle.parity import load_parity
from ..provenance import load_provenance
from ..bundle.verify import verify_chunk_file, verify_chunks
from ..trust import TrustStore, verify_manifest
from ._host import HostContext, host_options
from ._oci import RegistryOptions, bundle_or_reference, opened, registry_options
from ..errors import UsageError
from ..oci.reference import Reference
from .group import cli, emit, human_size, output_options, progress_bar, signer_names, trust_fields, \
    trust_lines, trust_option


@cli.command()
@bundle_or_reference
@trust_option
@click.option("--chunk", "chunk_files", multiple=True, type=click.Path(path_type=Path),
              help="Check only this chunk file against the signed manifest (repeatable); a file in a folder "
                   "named parity (parity/00003.bin) against the signed parity layout.")
@output_options
@registry_options
@host_options
def verify(bundle: Path | Reference, trust_dir: Path, chunk_files: tuple[Path, ...], as_json: bool,
           progress: bool | None, registry: RegistryOptions, host: HostContext) -> None:
    """Check BUNDLE's signatures, then every chunk (or only --chunk files), then, on a site host,
    the bundle's site policy. BUNDLE is a directory or oci://HOST[:PORT]/REPO:TAG (docs/oci.md)."""
    if isinstance(bundle, Reference) and chunk_files:
        raise UsageError("--chunk checks chunk files against a bundle directory, not an oci:// reference",
                         subject="--chunk")
    with opened(bundle, registry) as root:
        _verify(root, trust_dir, chunk_files, as_json, progress, host, streamed=isinstance(bundle, Reference))


def _verify(bundle: Path, trust_dir: Path, chunk_files: tuple[Path, ...], as_json: bool, progress: bool | None,
            host: HostContext, *, streamed: bool) -> None:
    trust = TrustStore.from_dir(trust_dir)
    raw = read_raw_bundle(bundle)
    verified = host.note(verify_manifest(raw, trust=trust))
    m = verified.manifest
    parity = load_parity(bundle, verified)
    provenance = load_provenance(bundle, verified)  # docs/format.md 11.4: signed beside the manifest
    if chunk_files:
        checked = [verify_chunk_file(path, verified, parity) for path in chunk_files]
        count, size = len(checked), sum(c.size for c in checked)
    else:
        extra = len(parity.layout.parity) * m.chunk_size if parity else 0
        with progress_bar(m.payload_size + extra, "verify", progress) as bar:
            if streamed:
                from ..oci.transfer import verify_registry_chunks  # http.client and ssl: only for oci://

                report = verify_registry_chunks(bundle, verified, progress=bar)
            else:
                report = verify_chunks(bundle, verified, progress=bar, parity=parity)
        count, size = report.chunks, report.bytes
        host.decide(bundle, verified, trust_dir=trust_dir)
    scope = "chunk" if chunk_files else "bundle"
    emit(as_json, {
        "bundle": {"name": m.name, "version": m.version},
        "manifest_digest": verified.digest,
        "signers": list(verified.signers),
        "signatures": [c.to_dict() for c in verified.checks],
        "scope": scope,
        "chunks_checked": count,
        "chunks_total": len(m.chunks),
        "bytes_checked": size,
        "problems": [],  # on failure (exit 3), every bad chunk: ChunkProblem.to_dict
        # the signed parity layout, when the bundle has parity/; on failure, what it can rebuild (Damage.to_dict)
        "parity": {"groups": len(parity.layout.groups), "parity_chunks": len(parity.layout.parity),
                   "signers": list(parity.signers), "repairable": True, "damaged_groups": [], "needed": 0}
        if parity else None,
        "site": host.summary(),
        "provenance": {"signers": list(provenance.signers)} if provenance else None,
        **trust_fields(verified),
    }, [
        f"OK {m.name} {m.version}: signed by {signer_names(verified.trust or trust, verified.signers)}",
        f"OK {count} of {len(m.chunks)} chunk(s) verified ({human_size(size)})",
        *([f"OK {len(parity.layout.parity)} parity chunk(s) in {len(parity.layout.groups)} group(s), layout signed by "
           f"{signer_names(verified.trust or trust, parity.signers)}"] if parity and not chunk_files else []),
        *([f"OK provenance signed by {signer_names(verified.trust or trust, provenance.signers)}"]
          if provenance else []),
        *trust_lines(verified, persisted=False),
        *host.lines(),
    ])
