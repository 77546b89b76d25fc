"""The bundle directory itself (docs/format.md, "Layout"): manifest and signature files that are links,
FIFOs or endless, too many signatures, and a signed bundle that tries to replace an installed version.
Each is refused before the payload is read, with nothing changed under the prefix."""

from __future__ import annotations

import os
from pathlib import Path

from attack_site import Site
from gapship.installer.keys import signature_file_name
from hostile import craft, standard_payload


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
    """A signed bundle reusing the installed version number with other bytes may not replace it."""
    bundle = _bundle(site, version=site.previous)
    site.assert_refused(bundle, code=5, needles=("already installed", "different manifest"),
                        subject=str(site.home / site.previous))
