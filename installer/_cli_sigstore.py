"""``gapship trust add-sigstore``: pin a sigstore signer in a trust directory (docs/sigstore.md).

Registered by one import at the end of :mod:`.cli`. ``add-sigstore`` joins the ``trust`` group when
one is already registered (the trust-root commands), and creates it otherwise.
"""

from __future__ import annotations

from pathlib import Path

import click

from ._sigstore import pin_sigstore_signer
from .cli import cli, emit, json_option


def _trust_group() -> click.Group:
    existing = cli.commands.get("trust")
    if isinstance(existing, click.Group):
        return existing

    @cli.group(name="trust")
    def trust() -> None:
        """Manage the site's trust directory."""

    return trust


@_trust_group().command(name="add-sigstore")
@click.option("--trust", "trust_dir", required=True, type=click.Path(path_type=Path),
              help="Trust directory to pin the signer in (created if missing).")
@click.option("--trusted-root", required=True, type=click.Path(path_type=Path),
              help="Sigstore trusted_root.json to pin (copied into the trust directory).")
@click.option("--identity", required=True,
              help="Certificate identity (SAN), e.g. https://github.com/ORG/REPO/.github/workflows/release.yml@refs/tags/v1.0.0.")
@click.option("--issuer", required=True, help="OIDC issuer, e.g. https://token.actions.githubusercontent.com.")
@click.option("--name", default=None, help="Signer name (file name of the pin); derived from the identity if omitted.")
@json_option
def add_sigstore(trust_dir: Path, trusted_root: Path, identity: str, issuer: str, name: str | None,
                 as_json: bool) -> None:
    """Pin a sigstore signer: its signatures count toward the threshold like one key."""
    signer = pin_sigstore_signer(trust_dir, trusted_root=trusted_root, identity=identity, issuer=issuer, name=name)
    emit(as_json, {
        "signer": signer.signer_id,
        "name": signer.name,
        "identity": signer.identity,
        "issuer": signer.issuer,
        "trusted_root": str(signer.trusted_root),
    }, [
        f"pinned sigstore signer {signer.name}: identity {signer.identity}, issuer {signer.issuer}",
        f"trusted root copied to {signer.trusted_root}",
    ])
