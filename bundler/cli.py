"""The connected side's commands, ``keygen``, ``build`` and ``sign``, added to the installer's group
to make the one ``gapship`` command (docs/cli.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..installer.cli import cli, emit, human_size, json_option, output_options, progress_bar
from ..installer.errors import UsageError
from .build import build as build_bundle, collect_sources, parse_size
from .keys import SigningKey, keygen as write_keys
from .sign import sign_bundle, sign_bundle_sigstore
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
@click.option("--chunk-size", default="64MiB", show_default=True,
              help="Chunk size, e.g. 64MiB or 4GB.")
@output_options
def build(spec: Path, out: Path, key_file: Path, chunk_size: str, as_json: bool, progress: bool | None) -> None:
    """Freeze the models and safeguards of SPEC into a signed, chunked bundle at OUT."""
    size = parse_size(chunk_size)
    key = SigningKey.load(key_file)
    bundle_spec = load_spec(spec)
    total = sum(f.size for _, _, files in collect_sources(bundle_spec) for f in files)
    with progress_bar(total, "build", progress) as bar:
        result = build_bundle(bundle_spec, out=out, key=key, chunk_size=size, progress=bar)
    m = result.manifest
    emit(as_json, result.to_dict(), [
        f"built {m.name} {m.version} at {result.out}: {m.file_count} files, "
        f"{len(m.chunks)} chunk(s), {human_size(m.payload_size)}",
        f"signed by {result.signer[:16]}",
    ])


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key_file", type=click.Path(path_type=Path), help="Private Ed25519 signing key.")
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
        keyid, m = sign_bundle(bundle, SigningKey.load(key_file))
        emit(as_json, {"bundle": {"name": m.name, "version": m.version}, "keyid": keyid},
             [f"signed {m.name} {m.version} with {keyid[:16]}"])
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


def main() -> None:
    cli(prog_name="gapship")


from . import _cli_authorize  # noqa: E402,F401  (registers `gapship authorize`)
