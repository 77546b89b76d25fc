"""The bundle directory itself (docs/format.md, "Layout"): manifest and signature files that are links,
FIFOs or endless, too many signatures, a signed bundle that tries to replace an installed version;
named algorithms; and a prefix holding things the installer did not put there. Refusals happen before
the payload is read, with nothing changed under the prefix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attack_site import Site
from gapship.installer.crypto.keys import signature_file_name
from hostile import Payload, craft, standard_payload


def _bundle(site: Site, **kwargs: str) -> Path:
    return site.write(craft(standard_payload(), **kwargs))


def test_rejects_manifest_that_is_a_symlink(site: Site, tmp_path: Path) -> None:
    """A symlinked manifest.json could point the verifier at a file that changes under it."""
    bundle = _bundle(site)
    real = tmp_path / "elsewhere.json"
    (bundle / "manifest.json").rename(real)
    (bundle / "manifest.json").symlink_to(real)
    site.assert_refused(bundle, code=3, needles=("manifest.json", "symlink"), subject="manifest.json")


def test_rejects_manifest_that_is_a_fifo(site: Site) -> None:
    """A FIFO as manifest.json must not hang the installer waiting for a writer."""
    bundle = _bundle(site)
    (bundle / "manifest.json").unlink()
    os.mkfifo(bundle / "manifest.json")
    site.assert_refused(bundle, code=3, needles=("manifest.json", "not a regular file"), subject="manifest.json")


def test_rejects_chunk_that_is_a_fifo(site: Site) -> None:
    bundle = _bundle(site)
    (bundle / "chunks" / "00001.bin").unlink()
    os.mkfifo(bundle / "chunks" / "00001.bin")
    site.assert_refused(bundle, code=3, needles=("chunks/00001.bin", "not a regular file"),
                        subject="chunks/00001.bin")


def test_rejects_chunk_that_is_a_directory(site: Site) -> None:
    bundle = _bundle(site)
    (bundle / "chunks" / "00001.bin").unlink()
    (bundle / "chunks" / "00001.bin").mkdir()
    site.assert_refused(bundle, code=3, needles=("chunks/00001.bin", "not a regular file"),
                        subject="chunks/00001.bin")


def test_rejects_signature_that_is_a_symlink(site: Site, tmp_path: Path) -> None:
    bundle = _bundle(site)
    sig = bundle / "signatures" / signature_file_name(site.key.keyid)
    real = tmp_path / "sig"
    sig.rename(real)
    sig.symlink_to(real)
    site.assert_refused(bundle, code=4, needles=("symlink",), subject=f"signatures/{sig.name}")


def test_rejects_oversized_signature_file(site: Site) -> None:
    bundle = _bundle(site)
    sig = bundle / "signatures" / signature_file_name(site.key.keyid)
    sig.write_bytes(sig.read_bytes() + b"\0" * (64 * 1024))
    site.assert_refused(bundle, code=4, needles=(sig.name, "cap"))


def test_rejects_too_many_signature_files(site: Site) -> None:
    """Endless signature files: the directory is refused on its count before any is read."""
    bundle = _bundle(site)
    for i in range(64):
        (bundle / "signatures" / f"{i:064x}.ed25519.sig").write_bytes(b"\0" * 64)
    site.assert_refused(bundle, code=4, needles=("signatures/", "cap of 64"), subject="signatures")


def test_rejects_signature_over_other_manifest(site: Site) -> None:
    """A valid signature by the trusted key, but over another bundle's manifest."""
    bundle = _bundle(site)
    other = _bundle(site, version="2.0.1")
    name = signature_file_name(site.key.keyid)
    (bundle / "signatures" / name).write_bytes((other / "signatures" / name).read_bytes())
    site.assert_refused(bundle, code=4, needles=("no valid signature", "invalid"), subject="signatures")


def test_rejects_same_version_with_other_content(site: Site) -> None:
    """A signed bundle reusing the installed version number with other bytes may not replace it: the
    anti-rollback floor refuses it first (docs/trust.md); with --allow-reinstall the different
    manifest is still refused (tests/cli/test_roundtrip.py)."""
    bundle = _bundle(site, version=site.previous)
    site.assert_refused(bundle, code=5, needles=("already the highest version installed", "anti-rollback"),
                        subject=f"demo {site.previous}")


# -- named algorithms (security.md, "Algorithms") -------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha384", "sha512"])
def test_installs_bundle_hashed_with_another_named_algorithm(site: Site, algorithm: str) -> None:
    """The hash algorithm is a named manifest field: a SHA-384 (CNSA 2.0) or SHA-512 bundle installs."""
    files = {"config.json": b"{}\n", "weights.bin": b"w" * 3000}
    crafted = craft(standard_payload(files, algorithm=algorithm))
    code, out = site.install(site.write(crafted))
    assert code == 0, out
    assert out["manifest_digest"].startswith(f"{algorithm}:")
    assert (site.home / "current" / "models/tiny/weights.bin").read_bytes() == files["weights.bin"]


def test_rejects_bundle_claiming_a_stronger_algorithm_than_its_digests(site: Site) -> None:
    """hash_algorithm says sha384, the digests are sha256 (a downgrade dressed up): refused on length."""
    crafted = craft(standard_payload())
    crafted.manifest["hash_algorithm"] = "sha384"
    site.assert_refused(site.write(crafted), code=6, needles=("not a lower-case hex sha384 digest",))


def test_rejects_bundle_whose_only_signature_uses_an_unknown_scheme(site: Site) -> None:
    """A signature file for a scheme this installer does not implement never counts as valid."""
    bundle = _bundle(site)
    sig = bundle / "signatures" / signature_file_name(site.key.keyid)
    sig.rename(sig.with_name(f"{site.key.keyid}.mldsa87.sig"))
    site.assert_refused(bundle, code=4, needles=("no valid signature", "unsupported"), subject="signatures")


# -- the prefix holds things the installer did not put there ---------------------------------------------


def test_ignores_planted_staging_directory(site: Site, tmp_path: Path) -> None:
    """A directory named like staging, planted with a symlink out of the prefix: the installer stages
    into a fresh directory of its own, removes the planted one, and never writes through the link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = site.home / ".staging-planted"
    (planted / "models").mkdir(parents=True)
    (planted / "models" / "tiny").symlink_to(outside)
    files = {"config.json": b"{}\n"}
    code, out = site.install(site.write(craft(standard_payload(files))))
    assert code == 0, out
    assert list(outside.iterdir()) == []
    assert not planted.exists()
    assert (site.home / "current" / "models/tiny/config.json").read_bytes() == b"{}\n"


def test_rejects_planted_version_directory(site: Site) -> None:
    """PREFIX/demo/2.0.0 exists but was not installed by this manifest: never adopted as installed."""
    planted = site.home / "2.0.0"
    (planted / "models" / "tiny").mkdir(parents=True)
    (planted / "models" / "tiny" / "config.json").write_bytes(b"planted\n")
    site.assert_refused(_bundle(site), code=5, needles=("different manifest",), subject=str(planted))


def test_never_executes_bundle_content(site: Site, tmp_path: Path) -> None:
    """Executable files, Python path hooks and install-script look-alikes are only ever written."""
    marker = tmp_path / "executed"
    script = f"#!/bin/sh\ntouch {marker}\n".encode()
    payload = Payload()
    payload.add("models/tiny/install.sh", script, mode=0o755)
    payload.add("models/tiny/setup.py", f"open({str(marker)!r}, 'w')\n".encode())
    payload.add("models/tiny/sitecustomize.pth", f"import os; open({str(marker)!r}, 'w')\n".encode())
    payload.policy()
    code, out = site.install(site.write(payload))
    assert code == 0, out
    assert not marker.exists()
    assert (site.home / "current" / "models/tiny/install.sh").stat().st_mode & 0o777 == 0o755
