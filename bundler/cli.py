"""The connected side's commands, ``keygen``, ``build`` and ``sign``, added to the installer's group
to make the one ``gapship`` command (docs/cli.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..installer.cli import cli, emit, human_size, json_option, output_options, progress_bar
from .build import DEFAULT_CHUNK_SIZE, build as build_bundle, check_output_free, collect_sources, parse_size
from .deps import frozen_dependencies
from .keys import SigningKey, keygen as write_keys
from .sign import sign_bundle
from .spec import load_spec


@cli.command()
@click.argument("name")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Where to write NAME.key and NAME.pub.")
@json_option
def keygen(name: str, out_dir: Path, as_json: bool) -> None:
    """Write an Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub."""
    private, public, key = write_keys(name, out_dir)
    emit(as_json, {"private": str(private), "public": str(public), "keyid": key.keyid}, [
        f"wrote {private} (private: keep it offline) and {public}",
        f"key id {key.keyid}",
    ])


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path), help="Private signing key.")
@click.option("--chunk-size", default=str(DEFAULT_CHUNK_SIZE), show_default=True,
              help="Chunk size, e.g. 64MiB or 4GB.")
@click.option("--offline", is_flag=True,
              help="Take dependency wheels only from the spec's find_links folders (pip --no-index).")
@click.option("--include-gapship", is_flag=True,
              help="Also bundle gapship's own wheel and its dependencies for the target (bootstrap).")
@output_options
def build(spec: Path, out: Path, key_file: Path, chunk_size: str, offline: bool, include_gapship: bool,
          as_json: bool, progress: bool | None) -> None:
    """Freeze the models, safeguards and Python dependencies of SPEC into a signed, chunked bundle at OUT."""
    size = parse_size(chunk_size)
    key = SigningKey.load(key_file)
    bundle_spec = load_spec(spec)
    check_output_free(out)  # refuse a bad output or model source before spending time on dependencies
    collect_sources(bundle_spec)
    with frozen_dependencies(bundle_spec.dependencies, offline=offline, include_gapship=include_gapship,
                             work_dir=out.parent) as deps:
        total = sum(f.size for _, _, files in collect_sources(bundle_spec, deps) for f in files)
        with progress_bar(total, "build", progress) as bar:
            result = build_bundle(bundle_spec, out=out, key=key, chunk_size=size, progress=bar, dependencies=deps)
    m = result.manifest
    emit(as_json, result.to_dict(), [
        f"built {m.name} {m.version} at {result.out}: {m.file_count} files, "
        f"{len(m.chunks)} chunk(s), {human_size(m.payload_size)}",
        f"signed by {result.signer[:16]}",
    ])


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path), help="Private signing key.")
@json_option
def sign(bundle: Path, key_file: Path, as_json: bool) -> None:
    """Add a signature by KEY to an existing BUNDLE."""
    keyid, m = sign_bundle(bundle, SigningKey.load(key_file))
    emit(as_json, {"bundle": {"name": m.name, "version": m.version}, "keyid": keyid},
         [f"signed {m.name} {m.version} with {keyid[:16]}"])


def main() -> None:
    cli(prog_name="gapship")
