"""``gapship build``: freeze a spec's models, safeguards and dependencies into a signed, chunked
bundle (docs/spec.md, docs/release-engineer.md)."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ...installer.cli.group import cli, emit, human_size, output_options, progress_bar
from ...installer.crypto.hashing import HASH_ALGORITHMS
from ...installer.bundle.fec import EXTRA, have_zfec
from ...installer.errors import HostError
from ...installer.formats.manifest import Manifest
from ..build import build as build_bundle, check_output_free, from_base_counts, parse_size
from ..delta import load_base
from ..parity import parse_percent
from ..deps.freeze import frozen_dependencies
from ..keys import SigningKey
from ..sources import add_dependencies, collect_sources
from ..rebuild import check_same, load_reference, read_manifest
from ..spec import load_spec


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Bundle directory to create (required, but with --check-against, where the rebuild is kept).")
@click.option("--key", "key_files", multiple=True, type=click.Path(path_type=Path),
              help="Private signing key (repeatable: e.g. an Ed25519 and an ML-DSA-87 key for hybrid signing). "
                   "Required, but with --check-against (a throwaway key signs the rebuild).")
@click.option("--chunk-size", default="64MiB", show_default=True,
              help="Chunk size, e.g. 64MiB or 4GB.")
@click.option("--hash", "hash_algorithm", type=click.Choice(HASH_ALGORITHMS), default="sha256", show_default=True,
              help="Hash for chunks and files (sha384 for CNSA 2.0 sites).")
@click.option("--expires", help="Refuse the bundle after this: a duration after creation (90d, 12h, 2w) or "
                                "YYYY-MM-DDTHH:MM:SSZ.")
@click.option("--offline", is_flag=True,
              help="Take dependency wheels only from the spec's find_links folders (pip --no-index).")
@click.option("--include-gapship", is_flag=True,
              help="Also bundle gapship's own wheel and its dependencies for the target (bootstrap).")
@click.option("--parity", "parity_percent", default=None,
              help="Also write Reed-Solomon parity chunks, this share of the data chunks (e.g. 10%; needs "
                   "gapship[parity]).")
@click.option("--base", "base_dir", type=click.Path(path_type=Path),
              help="Build a delta of this previous bundle (its directory, or only its manifest.json and signatures/): "
                   "only files the base does not hold go into the payload.")
@click.option("--base-trust", "base_trust", type=click.Path(path_type=Path),
              help="Trust directory to check the base's signatures against (default: the public halves of --key).")
@click.option("--download", is_flag=True,
              help="Fetch what a model's Hugging Face source lacks into its cache first (snapshot_download, with the "
                   "model's include/exclude; needs gapship[hf] and the network).")
@click.option("--check-against", "against_dir", type=click.Path(path_type=Path),
              help="Rebuild SPEC with this bundle's SOURCE_DATE_EPOCH, chunk size, hash and expiry, and exit 0 only "
                   "if the manifest is byte-identical (else 3, naming the first file that differs).")
@output_options
def build(spec: Path, out: Path | None, key_files: tuple[Path, ...], chunk_size: str, hash_algorithm: str,
          expires: str | None, offline: bool, include_gapship: bool, parity_percent: str | None,
          base_dir: Path | None, base_trust: Path | None, download: bool, against_dir: Path | None, as_json: bool,
          progress: bool | None) -> None:
    """Freeze the models, safeguards and Python dependencies of SPEC into a signed, chunked bundle at OUT."""
    if against_dir is not None:
        with _rebuild_place(out) as place:
            _check_against(spec, against_dir, place, key_files=key_files, offline=offline,
                           include_gapship=include_gapship, base_dir=base_dir, base_trust=base_trust,
                           download=download, as_json=as_json, progress=progress)
        return
    if out is None or not key_files:
        raise click.UsageError(f"Missing option '{'--out' if out is None else '--key'}'.")
    size = parse_size(chunk_size)
    share = parse_percent(parity_percent) if parity_percent is not None else None
    if share is not None and not have_zfec():
        raise HostError(f"build --parity needs zfec: install {EXTRA}", subject="zfec")
    key, *others = [SigningKey.load(k) for k in key_files]
    bundle_spec = load_spec(spec)
    if base_trust is not None and base_dir is None:
        raise click.UsageError("--base-trust needs --base")
    base = None if base_dir is None else load_base(base_dir, keys=[k.public for k in (key, *others)],
                                                   trust_dir=base_trust)
    check_output_free(out)  # refuse a bad output or model source before spending time on dependencies
    sources = collect_sources(bundle_spec, download=download)  # the one walk of the model trees; reused below
    with frozen_dependencies(bundle_spec.dependencies, offline=offline, include_gapship=include_gapship,
                             work_dir=out.parent) as deps:
        sources = add_dependencies(bundle_spec, sources, deps)
        total = sum(group.size for group in sources)
        with progress_bar(total, "build", progress) as bar:
            result = build_bundle(bundle_spec, out=out, key=key, chunk_size=size, progress=bar,
                                  algorithm=hash_algorithm, expires=expires, also_sign=others, dependencies=deps,
                                  sources=sources, parity=share, base=base, command=_command())
    m = result.manifest
    emit(as_json, result.to_dict(), [
        f"built {m.name} {m.version} at {result.out}: {m.file_count} files, "
        f"{len(m.chunks)} chunk(s), {human_size(m.payload_size)}, {m.hash_algorithm}"
        + (f", expires {m.expires}" if m.expires else ""),
        *([f"delta of {m.base.name} {m.base.version} ({m.base.manifest_digest[:23]}): "
           f"{from_base_counts(m)['files']} file(s) taken from the base"] if m.base else []),
        *_model_lines(m),
        f"signed by {', '.join(k[:16] for k in result.signers)}",
        *([f"parity: {len(result.parity.layout.parity)} chunk(s) in {len(result.parity.layout.groups)} group(s)"]
          if result.parity else []),
    ])


def _model_lines(m: Manifest) -> list[str]:
    """Per model: its Hugging Face origin, and what its include/exclude left out (docs/spec.md)."""
    lines = []
    for comp in m.components:
        if comp.origin is not None:
            at = f" at {comp.origin.revision}" if comp.origin.revision else ""
            lines.append(f"model {comp.name}: {comp.origin.hf_repo}{at}")
        if comp.left_out is not None:
            lines.append(f"model {comp.name}: selection left out {comp.left_out.files} file(s), "
                         f"{human_size(comp.left_out.bytes)}")
    return lines


def _command() -> tuple[str, ...]:
    """The build command as typed, for the provenance (docs/sbom.md); empty when not run as ``gapship``
    (a test's CliRunner), and the library then records ``gapship build SPEC``."""
    return ("gapship", *sys.argv[1:]) if Path(sys.argv[0]).name == "gapship" else ()


@contextmanager
def _rebuild_place(out: Path | None) -> Iterator[Path]:
    """Where --check-against builds: OUT when given (kept), else a private folder removed afterwards."""
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="gapship-rebuild-") as folder:
        yield Path(folder) / "bundle"


def _check_against(spec: Path, against: Path, out: Path, *, key_files: tuple[Path, ...], offline: bool,
                   include_gapship: bool, base_dir: Path | None, base_trust: Path | None, download: bool,
                   as_json: bool, progress: bool | None) -> None:
    """Rebuild with the reference's own parameters (docs/sbom.md, "Independent rebuilds"); exit 3 on a difference."""
    reference = load_reference(against)
    m = reference  # its name, version, chunk size, hash and expiry; not the parsed manifest (memory)
    keys = [SigningKey.load(k) for k in key_files] or [SigningKey.generate()]
    bundle_spec = load_spec(spec)
    base = None if base_dir is None else load_base(base_dir, keys=[k.public for k in keys], trust_dir=base_trust)
    check_output_free(out)
    with frozen_dependencies(bundle_spec.dependencies, offline=offline, include_gapship=include_gapship,
                             work_dir=out.parent) as deps:
        sources = collect_sources(bundle_spec, deps, download=download)
        with progress_bar(sum(group.size for group in sources), "rebuild", progress) as bar:
            result = build_bundle(bundle_spec, out=out, key=keys[0], also_sign=keys[1:], chunk_size=m.chunk_size,
                                  algorithm=m.hash_algorithm, expires=m.expires, now=reference.created,
                                  dependencies=deps, sources=sources, base=base, progress=bar, command=_command())
    checked = check_same(reference, read_manifest(out))
    emit(as_json, {**result.to_dict(), "check_against": checked.to_dict()}, [
        f"rebuilt {m.name} {m.version} with SOURCE_DATE_EPOCH={checked.to_dict()['source_date_epoch']}: "
        f"manifest identical to {against} ({reference.digest})",
    ])
