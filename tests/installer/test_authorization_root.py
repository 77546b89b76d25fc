"""Site authorizations under a trust root (docs/trust.md): the root's ``authorize`` role decides who
may sign them, not the legacy TRUSTDIR/authorize/ folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from gapship_testing import run_json, tree
from safeguards_testing import (  # noqa: F401
    authorization, build_bundle, digest_of, isolated_host, site_file,
)
from trust_testing import init_root

pytestmark = pytest.mark.usefixtures("isolated_host")
SAFEGUARDS = ("inference-audit-log", "content-filter")


@pytest.fixture
def env(tmp_path: Path, make_key):  # type: ignore[no-untyped-def]
    root, release, authorizer = make_key("root"), make_key("release"), make_key("authorizer")
    trust = tmp_path / "trust"
    init_root(trust, root=[root], release=[release], authorize=[authorizer])
    return dict(release=release, authorizer=authorizer, trust=trust, bundle=build_bundle(tmp_path, release),
                prefix=tmp_path / "prefix", site=site_file(tmp_path, "agency-x", *SAFEGUARDS), tmp=tmp_path)


def install(env, auth: Path):  # type: ignore[no-untyped-def]
    return run_json("install", env["bundle"], "--trust", env["trust"], "--prefix", env["prefix"],
                    "--audit-log", env["tmp"] / "audit.jsonl", "--site-config", env["site"], "--authorization", auth)


def test_sensitive_site_installs_with_authorization_from_the_authorize_role(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]))
    code, out = install(env, auth)
    assert code == 0, out
    assert out["site"]["authorizations"][0]["signers"] == [env["authorizer"].keyid]


def test_rejects_authorization_signed_by_a_release_key_of_the_root(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["release"], manifest_digest=digest_of(env["bundle"]))
    code, out = install(env, auth)
    assert code == 4, out
    assert out["error"]["kind"] == "trust" and "authorize" in out["error"]["message"]
    assert tree(env["prefix"] / "demo").keys() <= {".lock"}


def test_rejects_authorization_when_the_root_has_no_authorize_role(env, make_key) -> None:  # type: ignore[no-untyped-def]
    root, release = make_key("root2"), env["release"]
    trust = env["tmp"] / "trust-no-authorize"
    init_root(trust, root=[root], release=[release])
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]))
    code, out = run_json("install", env["bundle"], "--trust", trust, "--prefix", env["prefix"],
                         "--audit-log", env["tmp"] / "audit.jsonl", "--site-config", env["site"], "--authorization", auth)
    assert code == 4, out
    assert "no authorize role" in out["error"]["message"]


def test_authorization_signed_with_an_ml_dsa_87_authorize_key(tmp_path: Path, make_key) -> None:  # type: ignore[no-untyped-def]
    """`gapship authorize` names the signature file after the key's algorithm, so a post-quantum
    authorize key works end to end (it used to write <keyid>.ed25519.sig for every key)."""
    from gapship.bundler.keys import SigningKey, keygen
    from gapship.installer.crypto.keys import ML_DSA_87
    from gapship_testing import KeyPair

    private, public, _ = keygen("pq-authorizer", tmp_path / "keys", ML_DSA_87)
    authorizer = KeyPair("pq-authorizer", private, public, SigningKey.load(private))
    root, release = make_key("root"), make_key("release")
    trust = tmp_path / "trust"
    init_root(trust, root=[root], release=[release], authorize=[authorizer])
    bundle = build_bundle(tmp_path, release)
    auth = authorization(tmp_path / "auth", authorizer, manifest_digest=digest_of(bundle))
    assert [p.name for p in (auth / "signatures").iterdir()] == [f"{authorizer.keyid}.ml-dsa-87.sig"]
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", tmp_path / "prefix",
                         "--audit-log", tmp_path / "audit.jsonl", "--site-config", site_file(tmp_path, "agency-x", *SAFEGUARDS),
                         "--authorization", auth)
    assert code == 0, out
