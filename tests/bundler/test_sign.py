"""``gapship sign``: a second signer on an existing bundle, and what verify and install make of it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from gapship_testing import KeyPair, assert_error, run, run_json, tree


def _sig(key: KeyPair) -> str:
    return f"{key.keyid}.ed25519.sig"


def test_two_signers_both_reported(make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
                                   make_bundle: Callable[..., Path]) -> None:
    first, second = make_key("release"), make_key("security-officer")
    bundle = make_bundle(first)
    manifest = (bundle / "manifest.json").read_bytes()

    code, out = run_json("sign", bundle, "--key", second.private)
    assert code == 0, out
    assert out["keyid"] == second.keyid
    assert (bundle / "manifest.json").read_bytes() == manifest  # signing never rewrites the manifest
    assert sorted(p.name for p in (bundle / "signatures").iterdir()) == sorted([_sig(first), _sig(second)])

    code, out = run_json("verify", bundle, "--trust", make_trust(first, second))
    assert code == 0, out
    assert out["signers"] == sorted([first.keyid, second.keyid])
    assert {(s["keyid"], s["status"]) for s in out["signatures"]} == {(first.keyid, "valid"), (second.keyid, "valid")}


def test_trust_in_the_second_signer_alone_suffices(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                                   make_trust: Callable[..., Path],
                                                   make_bundle: Callable[..., Path]) -> None:
    first, second = make_key("release"), make_key("security-officer")
    bundle = make_bundle(first)
    assert run_json("sign", bundle, "--key", second.private)[0] == 0
    trust = make_trust(second)

    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 0, out
    assert out["signers"] == [second.keyid]
    assert {(s["keyid"], s["status"]) for s in out["signatures"]} == {(first.keyid, "untrusted"),
                                                                      (second.keyid, "valid")}

    prefix = tmp_path / "prefix"
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix)
    assert code == 0, out
    installed = prefix / "demo" / "1.0.0"
    assert json.loads((installed / "receipt.json").read_text())["signers"] == [second.keyid]
    # both signature files travel with the install, so it can be re-verified against another trust dir
    assert sorted(p.name for p in (installed / "signatures").iterdir()) == sorted([_sig(first), _sig(second)])


def test_signing_twice_with_one_key_keeps_one_signature(make_key: Callable[[str], KeyPair],
                                                        make_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    bundle = make_bundle(key)
    before = tree(bundle)
    assert run_json("sign", bundle, "--key", key.private)[0] == 0
    assert tree(bundle) == before  # Ed25519 is deterministic: the same file, rewritten


def test_rejects_signing_with_a_public_key(make_key: Callable[[str], KeyPair],
                                           make_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    bundle = make_bundle(key)
    before = tree(bundle)
    code, out = run_json("sign", bundle, "--key", key.public)
    assert code == 2
    message = assert_error(out, code=2, kind="usage", subject=str(key.public))
    assert "is a public key" in message
    assert tree(bundle) == before


def test_rejects_signing_a_manifest_that_is_not_canonical(make_key: Callable[[str], KeyPair],
                                                          make_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    bundle = make_bundle(key)
    manifest = bundle / "manifest.json"
    manifest.write_bytes(json.dumps(json.loads(manifest.read_bytes()), indent=1).encode())
    before = tree(bundle)
    result = run("sign", bundle, "--key", key.private)
    assert result.exit_code == 6
    assert result.stderr.startswith("gapship: error: manifest is not in canonical form")
    assert tree(bundle) == before
