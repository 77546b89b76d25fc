"""``gapship authorize`` (connected side): create a signed site authorization."""

from __future__ import annotations

from pathlib import Path

import click

from ...installer.cli.group import cli, emit, json_option, trust_dir_option
from ...installer.trust import TrustStore
from ..authorize import create, selector, write
from ..keys import SigningKey


@cli.command()
@click.option("--site", "site_id", required=True, help="The site id the authorization is for.")
@click.option("--manifest-digest", help="The one bundle it covers, e.g. sha256:<hex> (from `gapship verify --json`).")
@click.option("--bundle-name", help="Or: the bundle name it covers (with --versions).")
@click.option("--versions", help="With --bundle-name: a PEP 440 range such as '>=1,<2'.")
@click.option("--expires", required=True, help="How long it holds: 30d, 12h, or YYYY-MM-DDTHH:MM:SSZ.")
@click.option("--require", "require", multiple=True, help="An extra safeguard the site must have (repeatable).")
@click.option("--key", "key_files", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Private authorize-role key (repeatable, one signature each). Not a release key.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="New authorization directory, or a bundle directory to carry it under authorizations/.")
@trust_dir_option(required=False, help="The authority's trust directory: refuse (exit 2) unless the --key "
                                       "signatures meet its authorize role (threshold, algorithms, no release key).")
@json_option
def authorize(site_id: str, manifest_digest: str | None, bundle_name: str | None, versions: str | None,
              expires: str, require: tuple[str, ...], key_files: tuple[Path, ...], out: Path,
              trust_dir: Path | None, as_json: bool) -> None:
    """Authorize one site to install one bundle until an expiry, with extra required safeguards."""
    bundle = selector(manifest_digest=manifest_digest, name=bundle_name, versions=versions)
    auth = create(site=site_id, bundle=bundle, expires=expires, require=require)
    trust = TrustStore.from_dir(trust_dir) if trust_dir is not None else None
    written = write(auth, keys=[SigningKey.load(k) for k in key_files], out=out, trust=trust)
    emit(as_json, {"path": str(written.path), "id": written.digest, "signers": list(written.signers),
                   **auth.to_dict()}, [
        f"wrote {written.path}: site {auth.site}, {auth.bundle.describe()}, expires {auth.expires}",
        f"id {written.digest}; signed by {', '.join(s[:16] for s in written.signers)}",
    ])
