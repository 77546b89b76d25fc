"""``gapship trust add-sigstore``, sigstore signatures seen by ``verify``/``install``/``inspect``, and
``gapship sign --sigstore`` (docs/sigstore.md).

A real sigstore signature over a fresh gapship manifest needs Fulcio, Rekor and an OIDC identity, so
offline the bundles here carry a real sigstore bundle over another artifact: it is checked and refused
as a bad signature. The one real end-to-end signing test needs the network and an ambient OIDC
credential (CI with ``id-token: write``): it is marked ``network`` and runs only with
GAPSHIP_NETWORK_TESTS=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gapship.installer.trust import TrustStore
from gapship_testing import KeyPair, run, run_json, tree
from sigstore_assets import PRODUCTION, STAGING, block_sigstore, require_assets

pytest.importorskip("sigstore", reason="the gapship[sigstore] extra is not installed")

NETWORK = os.environ.get("GAPSHIP_NETWORK_TESTS") == "1"
needs_network = pytest.mark.skipif(not NETWORK, reason="needs the network: set GAPSHIP_NETWORK_TESTS=1")


@pytest.fixture(autouse=True)
def _assets() -> None:
    require_assets()


def add_sigstore(trust: Path, *extra: str, root: Path = PRODUCTION.trusted_root, identity: str = PRODUCTION.identity,
                 issuer: str = PRODUCTION.issuer) -> tuple[int, dict[str, object]]:
    return run_json("trust", "add-sigstore", "--trust", trust, "--trusted-root", root, "--identity", identity,
                    "--issuer", issuer, *extra)


@pytest.fixture
def signed_bundle(make_key: Callable[[str], KeyPair], make_bundle: Callable[..., Path]) -> tuple[KeyPair, Path]:
    """A real gapship bundle signed with Ed25519 that also carries a real sigstore bundle over other bytes."""
    key = make_key("release")
    bundle = make_bundle(key)
    (bundle / "signatures" / "ci.sigstore.json").write_bytes(PRODUCTION.bundle_bytes)
    return key, bundle


# --- trust add-sigstore ---------------------------------------------------------------------------

def test_add_sigstore_pins_signer(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    code, out = add_sigstore(trust, "--name", "release-ci")
    assert code == 0, out
    assert out["signer"] == "sigstore:release-ci"
    assert (out["identity"], out["issuer"]) == (PRODUCTION.identity, PRODUCTION.issuer)
    assert (trust / "sigstore" / "release-ci.toml").is_file()
    assert (trust / "sigstore" / "release-ci.trusted_root.json").read_bytes() == PRODUCTION.trusted_root.read_bytes()
    (signer,) = TrustStore.from_dir(trust).sigstore
    assert signer.name == "release-ci" and signer.identity == PRODUCTION.identity


def test_add_sigstore_derives_a_name_from_the_identity(tmp_path: Path) -> None:
    code, out = add_sigstore(tmp_path / "trust")
    assert code == 0, out
    name = str(out["name"])
    assert name.startswith("github.com-trailofbits-rfc8785") and len(name) <= 64
    assert (tmp_path / "trust" / "sigstore" / f"{name}.toml").is_file()


def test_add_sigstore_human_output(tmp_path: Path) -> None:
    result = run("trust", "add-sigstore", "--trust", tmp_path / "t", "--trusted-root", STAGING.trusted_root,
                 "--identity", STAGING.identity, "--issuer", STAGING.issuer, "--name", "dev")
    assert result.exit_code == 0, result.output
    assert f"pinned sigstore signer dev: identity {STAGING.identity}, issuer {STAGING.issuer}" in result.stdout


def test_rejects_pin_of_invalid_trusted_root(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    bogus = tmp_path / "root.json"
    bogus.write_text('{"not": "a trusted root"}')
    code, out = add_sigstore(trust, "--name", "x", root=bogus)
    assert code == 2
    assert "is not a sigstore trusted root" in str(out["error"]["message"])
    assert tree(trust) == {}


def test_rejects_pin_with_empty_issuer(tmp_path: Path) -> None:
    code, out = add_sigstore(tmp_path / "trust", issuer=" ")
    assert code == 2
    assert "issuer must be a non-empty string" in str(out["error"]["message"])
    assert tree(tmp_path / "trust") == {}


def test_rejects_pin_that_would_overwrite(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    assert add_sigstore(trust, "--name", "ci")[0] == 0
    before = tree(trust)
    code, out = add_sigstore(trust, "--name", "ci", identity="https://github.com/other/repo/.github/workflows/r.yml@refs/tags/v1")
    assert code == 2
    assert "sigstore/ci.toml already exists" in str(out["error"]["message"])
    assert tree(trust) == before


def test_add_sigstore_without_extra_says_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block_sigstore(monkeypatch)
    code, out = add_sigstore(tmp_path / "trust", "--name", "ci")
    assert code == 7
    assert out["error"]["message"] == "cannot pin a sigstore signer: install gapship[sigstore]"
    assert tree(tmp_path / "trust") == {}


# --- verify / install / inspect with sigstore signature files ---------------------------------------

def test_verify_checks_sigstore_file_beside_ed25519(tmp_path: Path, signed_bundle: tuple[KeyPair, Path]) -> None:
    key, bundle = signed_bundle
    trust = tmp_path / "trust"
    assert add_sigstore(trust, "--name", "ci")[0] == 0
    (trust / key.public.name).write_bytes(key.public.read_bytes())
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 0, out
    assert out["signers"] == [key.keyid]
    (sig,) = [s for s in out["signatures"] if s["file"] == "ci.sigstore.json"]
    assert sig["status"] == "invalid" and sig["keyid"] is None
    assert "bad signature over the manifest bytes" in sig["detail"]

    code, out = run_json("inspect", bundle, "--trust", trust)
    assert code == 0
    assert {s["file"]: s["status"] for s in out["signatures"]} == {
        "ci.sigstore.json": "invalid", f"{key.keyid}.ed25519.sig": "valid"}


def test_rejects_bundle_whose_sigstore_signature_covers_other_bytes(tmp_path: Path,
                                                                   signed_bundle: tuple[KeyPair, Path]) -> None:
    _key, bundle = signed_bundle
    trust = tmp_path / "trust"
    assert add_sigstore(trust, "--name", "ci")[0] == 0  # only the sigstore signer is trusted
    prefix = tmp_path / "prefix"
    result = run("install", bundle, "--trust", trust, "--prefix", prefix)
    assert result.exit_code == 4
    assert "ci.sigstore.json: invalid" in result.stderr
    assert tree(prefix) == {}


def test_sigstore_signature_unchecked_without_extra(tmp_path: Path, signed_bundle: tuple[KeyPair, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    key, bundle = signed_bundle
    trust = tmp_path / "trust"
    assert add_sigstore(trust, "--name", "ci")[0] == 0
    block_sigstore(monkeypatch)
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 4
    assert "ci.sigstore.json: unchecked (sigstore signature could not be checked: install gapship[sigstore])" \
        in str(out["error"]["message"])

    (trust / key.public.name).write_bytes(key.public.read_bytes())  # an Ed25519 signature still counts
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 0, out
    (sig,) = [s for s in out["signatures"] if s["file"] == "ci.sigstore.json"]
    assert (sig["status"], sig["detail"]) == ("unchecked", "sigstore signature could not be checked: install gapship[sigstore]")


def test_verify_checks_sigstore_with_the_network_cut(tmp_path: Path, signed_bundle: tuple[KeyPair, Path]) -> None:
    key, bundle = signed_bundle
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot cut the network here (unshare -rn: {probe.stderr.decode().strip()})")
    trust = tmp_path / "trust"
    assert add_sigstore(trust, "--name", "ci")[0] == 0
    (trust / key.public.name).write_bytes(key.public.read_bytes())
    proc = subprocess.run(["unshare", "-rn", sys.executable, "-m", "gapship.installer", "verify", str(bundle),
                           "--trust", str(trust), "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (sig,) = [s for s in out["signatures"] if s["file"] == "ci.sigstore.json"]
    assert sig["status"] == "invalid" and "bad signature" in sig["detail"]


# --- gapship sign ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    ((), "give exactly one of --key FILE or --sigstore"),
    (("--sigstore", "--key", "KEY"), "give exactly one of --key FILE or --sigstore"),
    (("--key", "KEY", "--identity-token", "tok"), "--identity-token goes with --sigstore, not --key"),
])
def test_sign_needs_exactly_one_kind(make_key: Callable[[str], KeyPair], make_bundle: Callable[..., Path],
                                     args: tuple[str, ...], message: str) -> None:
    key = make_key("release")
    bundle = make_bundle(key)
    before = tree(bundle)
    argv = [str(key.private) if a == "KEY" else a for a in args]
    result = run("sign", bundle, *argv)
    assert result.exit_code == 2
    assert message in result.stderr
    assert tree(bundle) == before


def test_sign_sigstore_without_extra_says_install_it(make_key: Callable[[str], KeyPair],
                                                     make_bundle: Callable[..., Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = make_bundle(make_key("release"))
    before = tree(bundle)
    block_sigstore(monkeypatch)
    result = run("sign", bundle, "--sigstore")
    assert result.exit_code == 7
    assert "gapship sign --sigstore needs sigstore: install gapship[sigstore]" in result.stderr
    assert tree(bundle) == before


def test_sign_sigstore_refuses_bad_identity_token_before_any_network_use(
        tmp_path: Path, make_key: Callable[[str], KeyPair], make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(make_key("release"))
    before = tree(bundle)
    result = run("sign", bundle, "--sigstore", "--identity-token", "not-a-jwt")
    assert result.exit_code == 2
    assert "sigstore identity token refused: Identity token is malformed or missing claims" in result.stderr
    assert tree(bundle) == before


def test_sign_sigstore_without_identity_or_terminal_says_how(
        make_key: Callable[[str], KeyPair], make_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sigstore.oidc.detect_credential", lambda *_a: None)  # as outside CI
    monkeypatch.delenv("GAPSHIP_IDENTITY_TOKEN", raising=False)
    bundle = make_bundle(make_key("release"))
    before = tree(bundle)
    result = run("sign", bundle, "--sigstore")  # CliRunner's stdin is not a terminal: no browser flow
    assert result.exit_code == 2
    assert "no OIDC identity for sigstore: pass --identity-token" in result.stderr
    assert tree(bundle) == before


@pytest.mark.network
@needs_network
def test_sign_sigstore_then_verify_offline(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                           make_bundle: Callable[..., Path]) -> None:
    """The real thing: keyless signing in CI, then a site trusting only that identity, offline."""
    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import detect_credential

    if not (os.environ.get("GAPSHIP_IDENTITY_TOKEN") or detect_credential()):
        pytest.skip("no OIDC identity: run in CI with id-token permission or set GAPSHIP_IDENTITY_TOKEN")
    bundle = make_bundle(make_key("release"))
    for sig in (bundle / "signatures").iterdir():
        sig.unlink()  # only the sigstore signature remains
    code, out = run_json("sign", bundle, "--sigstore")
    assert code == 0, out
    root = tmp_path / "trusted_root.json"
    root.write_text(ClientTrustConfig.production().trusted_root._inner.to_json())
    trust = tmp_path / "trust"
    assert add_sigstore(trust, "--name", "ci", root=root, identity=str(out["identity"]),
                        issuer=str(out["issuer"]))[0] == 0
    proc = subprocess.run(["unshare", "-rn", sys.executable, "-m", "gapship.installer", "verify", str(bundle),
                           "--trust", str(trust), "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["signers"] == ["sigstore:ci"]
