"""``gapship sign``: add a signature to an existing bundle, by key or keyless with sigstore
(docs/keys.md, docs/sigstore.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ...installer.cli.group import cli, emit, json_option
from ...installer.errors import UsageError
from ..keys import SigningKey
from ..sign import sign_bundle, sign_bundle_sigstore


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
