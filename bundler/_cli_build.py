"""The connected side's commands ``keygen``, ``build`` and ``sign``, added to the installer's group
when first used (see :mod:`.cli`, the ``gapship`` entry point; docs/cli.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..installer.cli import cli, emit, human_size, json_option, output_options, progress_bar
from ..installer.errors import UsageError
from ..installer.hashing import HASH_ALGORITHMS
from ..installer.keys import ALGORITHMS, ED25519
from ._sources import add_dependencies, collect_sources
from .build import build as build_bundle, check_output_free, parse_size
from .deps import frozen_dependencies
from .keys import SigningKey, keygen as write_keys
from .sign import sign_bundle, sign_bundle_sigstore
from .spec import load_spec


@cli.command()
@click.argument("name")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Where to write NAME.key and NAME.pub.")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default=ED25519, show_default=True,
              help="ed25519 (FIPS 186-5) or ml-dsa-87 (FIPS 204, post-quantum; CNSA 2.0).")
@json_option
def keygen(name: str, out_dir: Path, algorithm: str, as_json: bool) -> None:
    """Write a key pair: NAME.key (private, mode 0600) and NAME.pub."""
    private, public, key = write_keys(name, out_dir, algorithm)
    emit(as_json, {"private": str(private), "public": str(public), "keyid": key.keyid, "algorithm": key.algorithm}, [
        f"wrote {private} (private: keep it offline) and {public}",
        f"{key.algorithm} key id {key.keyid}",
    ])


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--key", "key_files", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Private signing key (repeatable: e.g. an Ed25519 and an ML-DSA-87 key for hybrid signing).")
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
@output_options
def build(spec: Path, out: Path, key_files: tuple[Path, ...], chunk_size: str, hash_algorithm: str,
          expires: str | None, offline: bool, include_gapship: bool, as_json: bool, progress: bool | None) -> None:
    """Freeze the models, safeguards and Python dependencies of SPEC into a signed, chunked bundle at OUT."""
    size = parse_size(chunk_size)
    key, *others = [SigningKey.load(k) for k in key_files]
    bundle_spec = load_spec(spec)
    check_output_free(out)  # refuse a bad output or model source before spending time on dependencies
    sources = collect_sources(bundle_spec)  # the one walk of the model trees; reused below
    with frozen_dependencies(bundle_spec.dependencies, offline=offline, include_gapship=include_gapship,
                             work_dir=out.parent) as deps:
        sources = add_dependencies(bundle_spec, sources, deps)
        total = sum(group.size for group in sources)
        with progress_bar(total, "build", progress) as bar:
            result = build_bundle(bundle_spec, out=out, key=key, chunk_size=size, progress=bar,
                                  algorithm=hash_algorithm, expires=expires, also_sign=others, dependencies=deps,
                                  sources=sources)
    m = result.manifest
    emit(as_json, result.to_dict(), [
        f"built {m.name} {m.version} at {result.out}: {m.file_count} files, "
        f"{len(m.chunks)} chunk(s), {human_size(m.payload_size)}, {m.hash_algorithm}"
        + (f", expires {m.expires}" if m.expires else ""),
        f"signed by {', '.join(k[:16] for k in result.signers)}",
    ])


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key_file", type=click.Path(path_type=Path), help="Private signing key (Ed25519 or ML-DSA-87).")
@click.option("--sigstore", "use_sigstore", is_flag=True,
              help="Sign keylessly with sigstore (needs the network and gapship[sigstore]; docs/sigstore.md).")
@click.option("--identity-token", envvar="GAPSHIP_IDENTITY_TOKEN", show_envvar=True, default=None,
              help="OIDC token for --sigstore (default: ambient CI credentials, else a browser flow in a "
                   "terminal). Prefer the environment variable: a command line is visible to other users.")
@json_option
def sign(bundle: Path, key_file: Path | None, use_sigstore: bool, identity_token: str | None, as_json: bool) -> None:
    """Add a signature to an existing BUNDLE: by KEY, or keyless with --sigstore (exactly one)."""
    if (key_file is None) == (not use_sigstore):
        raise UsageError("give exactly one of --key FILE or --sigstore", subject="sign")
    if key_file is not None:
        if identity_token and _given_on_command_line("identity_token"):
            raise UsageError("--identity-token goes with --sigstore, not --key", subject="--identity-token")
        key = SigningKey.load(key_file)
        keyid, m = sign_bundle(bundle, key)
        emit(as_json, {"bundle": {"name": m.name, "version": m.version}, "keyid": keyid, "algorithm": key.algorithm},
             [f"signed {m.name} {m.version} with {key.algorithm} key {keyid[:16]}"])
        return
    signature, m = sign_bundle_sigstore(bundle, identity_token=identity_token, interactive=sys.stdin.isatty())
    emit(as_json, {"bundle": {"name": m.name, "version": m.version}, "kind": "sigstore", "file": signature.file,
                   "identity": signature.identity, "issuer": signature.issuer}, [
        f"signed {m.name} {m.version} with sigstore as {signature.identity} ({signature.issuer})",
        f"wrote {signature.file}; a site pins it with: gapship trust add-sigstore --identity "
        f"'{signature.identity}' --issuer '{signature.issuer}' --trusted-root trusted_root.json --trust TRUSTDIR",
    ])


def _given_on_command_line(param: str) -> bool:
    return click.get_current_context().get_parameter_source(param) == click.core.ParameterSource.COMMANDLINE
