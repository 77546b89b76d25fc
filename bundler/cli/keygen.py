"""``gapship keygen``: a new signing key pair, Ed25519 or ML-DSA-87 (docs/keys.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ...installer.cli.group import cli, emit, json_option
from ...installer.crypto.keys import ALGORITHMS, ED25519
from ..keys import keygen as write_keys


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
