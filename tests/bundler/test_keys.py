"""``gapship keygen``: the key files, their modes, no overwriting, and interoperability with openssl
(docs/format.md shows an admin checking a bundle by hand with ``openssl pkeyutl``)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from gapship_testing import KeyPair, assert_error, noise, run_json, tree


def test_keygen_writes_private_key_with_mode_0600(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    code, out = run_json("keygen", "release", "--out-dir", keys)
    assert code == 0, out
    private, public = keys / "release.key", keys / "release.pub"
    assert (out["private"], out["public"]) == (str(private), str(public))
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert len(out["keyid"]) == 64


@pytest.mark.parametrize("existing", ["release.key", "release.pub"])
def test_keygen_refuses_to_overwrite_a_key_file(tmp_path: Path, existing: str) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / existing).write_bytes(b"precious\n")
    before = tree(keys)
    code, out = run_json("keygen", "release", "--out-dir", keys)
    assert code == 2
    message = assert_error(out, code=2, kind="usage", subject=str(keys / existing))
    assert message == f"{keys / existing} already exists; refusing to overwrite a key"
    assert tree(keys) == before


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", ""])
def test_keygen_rejects_a_name_that_is_not_a_plain_file_name(tmp_path: Path, name: str) -> None:
    code, out = run_json("keygen", name, "--out-dir", tmp_path / "keys")
    assert code == 2
    assert "must be a plain file name" in assert_error(out, code=2, kind="usage", subject=name)
    assert not (tmp_path / "keys").exists()


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("openssl is not installed")
    version = subprocess.run([path, "version"], capture_output=True, text=True).stdout
    if not version.startswith("OpenSSL 3"):
        pytest.skip(f"pkeyutl -rawin needs OpenSSL 3 (found {version.strip()})")
    return path


def test_openssl_verifies_a_signature_with_the_pub_file(make_key: Callable[[str], KeyPair],
                                                       make_bundle: Callable[..., Path]) -> None:
    openssl = _openssl()
    key = make_key("release")
    bundle = make_bundle(key)
    signature = bundle / "signatures" / f"{key.keyid}.ed25519.sig"
    check = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(key.public), "-rawin",
             "-in", str(bundle / "manifest.json"), "-sigfile", str(signature)]
    ok = subprocess.run(check, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "Signature Verified Successfully" in ok.stdout

    (bundle / "manifest.json").write_bytes((bundle / "manifest.json").read_bytes().replace(b"1.0.0", b"1.0.1"))
    assert subprocess.run(check, capture_output=True).returncode != 0


def test_openssl_reads_the_key_files_and_agrees_on_the_key_id(make_key: Callable[[str], KeyPair]) -> None:
    openssl = _openssl()
    key = make_key("release")
    public = subprocess.run([openssl, "pkey", "-in", str(key.private), "-pubout"], capture_output=True, check=True)
    assert public.stdout == key.public.read_bytes()
    der = subprocess.run([openssl, "pkey", "-pubin", "-in", str(key.public), "-outform", "DER"],
                         capture_output=True, check=True)
    assert hashlib.sha256(der.stdout).hexdigest() == key.keyid


def test_ed25519_signature_is_the_one_pynacl_makes() -> None:
    """Signing goes through cryptography (no copies of a 30 MB manifest); Ed25519 is deterministic
    (RFC 8032), so the signature is byte for byte what PyNaCl made, and the installer accepts it."""
    import nacl.signing

    from gapship.bundler.keys import SigningKey

    key = SigningKey.generate()
    for message in (b"", b"manifest", noise(100_000, seed=1)):
        signature = key.sign(message)
        assert signature == nacl.signing.SigningKey(key.seed).sign(message).signature
        key.public.verify(message, signature, subject="test")
