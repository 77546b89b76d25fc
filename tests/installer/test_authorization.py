"""Site authorizations: made on the connected side, required by sensitive sites (docs/safeguards.md)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gapship.installer.formats.authorization import Authorization, BundleSelector
from gapship.installer.trust import AuthorizeKeys, verify_authorization
from gapship.installer.errors import PolicyError, TrustError
from gapship_testing import run_json, tree
from safeguards_testing import (  # noqa: F401
    add_authorize_key, authorization, build_bundle, digest_of, isolated_host, site_file,
)

pytestmark = pytest.mark.usefixtures("isolated_host")
SAFEGUARDS = ("inference-audit-log", "content-filter")


@pytest.fixture
def env(tmp_path: Path, make_key, make_trust):  # type: ignore[no-untyped-def]
    release, authorizer = make_key("release"), make_key("authorizer")
    trust = make_trust(release)
    add_authorize_key(trust, authorizer)
    bundle = build_bundle(tmp_path, release)
    return dict(release=release, authorizer=authorizer, trust=trust, bundle=bundle, prefix=tmp_path / "prefix",
                log=tmp_path / "audit.jsonl", site=site_file(tmp_path, "agency-x", *SAFEGUARDS), tmp=tmp_path)


def install(env, *args: str | Path, site: Path | None = None):  # type: ignore[no-untyped-def]
    return run_json("install", env["bundle"], "--trust", env["trust"], "--prefix", env["prefix"],
                    "--audit-log", env["log"], "--site-config", site or env["site"], *args)


def test_sensitive_site_installs_with_valid_authorization(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]))
    code, out = install(env, "--authorization", auth)
    assert code == 0, out
    version = env["prefix"] / "demo" / "1.0.0"
    assert sorted(p.name for p in (version / "models").iterdir()) == ["big", "tiny"]
    [record] = out["site"]["authorizations"]
    assert record["signers"] == [env["authorizer"].keyid]
    effective = json.loads((version / "effective-policy.json").read_bytes())
    assert effective["authorizations"][0]["id"] == record["id"]
    assert effective["expires"] == record["expires"]
    installed = version / "authorizations" / record["id"].replace(":", "-")
    assert (installed / "authorization.json").read_bytes() == (auth / "authorization.json").read_bytes()


def test_authorization_by_name_and_version_range(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], name="demo", versions=">=1,<2")
    code, out = install(env, "--authorization", auth)
    assert code == 0, out


def test_authorization_carried_in_the_bundle(env) -> None:  # type: ignore[no-untyped-def]
    carried = authorization(env["bundle"], env["authorizer"], manifest_digest=digest_of(env["bundle"]))
    assert carried.parent == env["bundle"] / "authorizations"
    code, out = install(env)
    assert code == 0, out
    assert len(out["site"]["authorizations"]) == 1


def test_carried_authorization_for_another_site_is_not_used(env) -> None:  # type: ignore[no-untyped-def]
    authorization(env["bundle"], env["authorizer"], site_id="demo-site", manifest_digest=digest_of(env["bundle"]))
    code, out = install(env)
    assert code == 5
    assert "is for site 'demo-site', not this site 'agency-x'" in out["error"]["message"]
    code, out = install(env, site=site_file(env["tmp"], "demo-site", "inference-audit-log"))
    assert code == 0, out


def test_authorization_adds_required_safeguards(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]),
                         require=("two-person-rule", "cleared-operator"))
    code, out = install(env, "--authorization", auth)
    assert code == 5
    assert "lacks required safeguard(s): cleared-operator, two-person-rule" in out["error"]["message"]
    assert tree(env["prefix"]) == {}
    site = site_file(env["tmp"], "agency-x", *SAFEGUARDS, "two-person-rule", "cleared-operator")
    code, out = install(env, "--authorization", auth, site=site)
    assert code == 0, out
    assert "two-person-rule" in out["site"]["required_safeguards"]


def test_rejects_authorization_for_another_site(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], site_id="agency-y",
                         manifest_digest=digest_of(env["bundle"]))
    code, out = install(env, "--authorization", auth)
    assert code == 5
    assert "is for site 'agency-y', not this site 'agency-x'" in out["error"]["message"]
    assert tree(env["prefix"]) == {}


def test_rejects_authorization_for_another_bundle(env, make_key) -> None:  # type: ignore[no-untyped-def]
    other = build_bundle(env["tmp"], env["release"], version="2.0.0")
    by_digest = authorization(env["tmp"] / "auth1", env["authorizer"], manifest_digest=digest_of(other))
    code, out = install(env, "--authorization", by_digest)
    assert code == 5
    assert f"is for manifest {digest_of(other)}, not demo 1.0.0" in out["error"]["message"]
    by_range = authorization(env["tmp"] / "auth2", env["authorizer"], name="demo", versions=">=2")
    code, out = install(env, "--authorization", by_range)
    assert code == 5
    assert "is for demo >=2, not demo 1.0.0" in out["error"]["message"]
    by_name = authorization(env["tmp"] / "auth3", env["authorizer"], name="other", versions=">=0")
    code, out = install(env, "--authorization", by_name)
    assert code == 5
    assert "is for other >=0" in out["error"]["message"]
    assert tree(env["prefix"]) == {}


def test_rejects_expired_authorization(env) -> None:  # type: ignore[no-untyped-def]
    issued = datetime.now(timezone.utc) - timedelta(days=31)
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]),
                         expires="30d", now=issued)
    code, out = install(env, "--authorization", auth)
    assert code == 5
    assert "expired at" in out["error"]["message"]
    assert tree(env["prefix"]) == {}


def test_rejects_authorization_signed_by_release_key(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["release"], manifest_digest=digest_of(env["bundle"]))
    code, out = install(env, "--authorization", auth)
    assert code == 4
    assert f"{env['release'].keyid[:16]}: not an authorize key" in out["error"]["message"]
    assert tree(env["prefix"]) == {}


def test_rejects_authorization_edited_after_signing(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], site_id="agency-y",
                         manifest_digest=digest_of(env["bundle"]))
    doc = auth / "authorization.json"
    doc.write_bytes(doc.read_bytes().replace(b'"agency-y"', b'"agency-x"'))
    code, out = install(env, "--authorization", auth)
    assert code == 4
    assert f"{env['authorizer'].keyid[:16]}: invalid" in out["error"]["message"]
    assert tree(env["prefix"]) == {}


def test_rejects_unsigned_authorization(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]))
    for sig in (auth / "signatures").iterdir():
        sig.unlink()
    code, out = install(env, "--authorization", auth)
    assert code == 4
    assert "no signatures" in out["error"]["message"]


def test_rejects_key_holding_both_roles(env) -> None:  # type: ignore[no-untyped-def]
    add_authorize_key(env["trust"], env["release"])
    auth = authorization(env["tmp"] / "auth", env["release"], manifest_digest=digest_of(env["bundle"]))
    code, out = install(env, "--authorization", auth)
    assert code == 4
    assert "is both a release key and an authorize key" in out["error"]["message"]


def test_rejects_explicit_authorization_that_does_not_apply_even_at_a_plain_site(env) -> None:  # type: ignore[no-untyped-def]
    """An authorization the admin names must apply: a mistake is not silently ignored."""
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]))
    code, out = install(env, "--authorization", auth, site=site_file(env["tmp"], "demo-site", "inference-audit-log"))
    assert code == 5
    assert "is for site 'agency-x', not this site 'demo-site'" in out["error"]["message"]


# -- the document and the pure verification --------------------------------------------------------


def authorize_keys(*keys) -> AuthorizeKeys:  # type: ignore[no-untyped-def]
    return AuthorizeKeys(keys={k.key.public.keyid: k.key.public for k in keys}, threshold=1, source="test")


def signed(doc: bytes, *keys) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {f"{k.keyid}.ed25519.sig": k.key.sign(doc) for k in keys}


def sample() -> Authorization:
    return Authorization(site="agency-x", bundle=BundleSelector(name="demo", versions="<2,>=1"),
                         issued="2030-01-01T00:00:00Z", expires="2030-02-01T00:00:00Z",
                         require_safeguards=("two-person-rule",))


def test_rejects_below_authorize_threshold(make_key) -> None:  # type: ignore[no-untyped-def]
    a, b = make_key("a"), make_key("b")
    doc = sample().to_bytes()
    keys = AuthorizeKeys(keys=authorize_keys(a, b).keys, threshold=2, source="test")
    with pytest.raises(TrustError, match="lacks 2 valid signature"):
        verify_authorization(doc, signed(doc, a), keys=keys, source="auth")
    verified = verify_authorization(doc, signed(doc, a, b), keys=keys, source="auth")
    assert verified.signers == tuple(sorted([a.keyid, b.keyid]))


def test_rejects_non_canonical_authorization(make_key) -> None:  # type: ignore[no-untyped-def]
    a = make_key("a")
    doc = json.dumps(sample().to_dict(), indent=1).encode()
    with pytest.raises(PolicyError, match="not canonical JSON"):
        verify_authorization(doc, signed(doc, a), keys=authorize_keys(a), source="auth")


def test_rejects_manifest_signature_as_authorization(make_key, make_bundle) -> None:  # type: ignore[no-untyped-def]
    """A signed manifest is not an authorization, even with a signature by an authorize key."""
    a = make_key("a")
    manifest = (make_bundle(a) / "manifest.json").read_bytes()
    with pytest.raises(PolicyError, match="not a valid authorization"):
        verify_authorization(manifest, signed(manifest, a), keys=authorize_keys(a), source="auth")


def test_document_round_trips() -> None:
    doc = sample()
    assert Authorization.from_bytes(doc.to_bytes(), source="x") == doc


@pytest.mark.parametrize("versions, version, inside", [
    ("<2,>=1", "1.0.0", True), ("<2,>=1", "1.9.3", True), ("<2,>=1", "2.0.0", False), ("<2,>=1", "0.9", False),
    ("<2,>=1", "1.5.0rc1", False), (">=1.5.0rc1", "1.5.0rc1", True), ("==1.*", "1.2", True),
])
def test_version_range_follows_pep_440(versions: str, version: str, inside: bool) -> None:
    selector = BundleSelector(name="demo", versions=versions)
    assert selector.matches(name="demo", version=version, manifest_digest="sha256:" + "0" * 64) is inside


# -- the command -------------------------------------------------------------------------------------


def test_authorize_command_writes_a_signed_directory(env) -> None:  # type: ignore[no-untyped-def]
    out = env["tmp"] / "granted"
    code, result = run_json("authorize", "--site", "agency-x", "--bundle-name", "demo", "--versions", ">=1, <2",
                            "--expires", "30d", "--require", "two-person-rule", "--key", env["authorizer"].private,
                            "--out", out)
    assert code == 0, result
    assert result["bundle"] == {"name": "demo", "versions": "<2,>=1"}
    assert result["signers"] == [env["authorizer"].keyid]
    assert (out / "signatures" / f"{env['authorizer'].keyid}.ed25519.sig").is_file()
    code, _ = run_json("authorize", "--site", "agency-x", "--bundle-name", "demo", "--versions", ">=1",
                       "--expires", "30d", "--key", env["authorizer"].private, "--out", out)
    assert code == 2


@pytest.mark.parametrize("args, problem", [
    (["--bundle-name", "demo"], "also needs a versions range"),
    (["--bundle-name", "demo", "--versions", ">=1", "--manifest-digest", "sha256:" + "0" * 64], "not both"),
    (["--manifest-digest", "sha256:abc"], "manifest_digest 'sha256:abc' must be"),
    (["--bundle-name", "demo", "--versions", "one"], "not a PEP 440 specifier"),
])
def test_authorize_command_rejects_bad_bundle_selector(env, args: list[str], problem: str) -> None:  # type: ignore[no-untyped-def]
    code, out = run_json("authorize", "--site", "agency-x", *args, "--expires", "1d",
                         "--key", env["authorizer"].private, "--out", env["tmp"] / "x")
    assert code == 2
    assert problem in out["error"]["message"]
    assert not (env["tmp"] / "x").exists()


def test_authorize_command_rejects_past_expiry(env) -> None:  # type: ignore[no-untyped-def]
    code, out = run_json("authorize", "--site", "agency-x", "--bundle-name", "demo", "--versions", ">=1",
                         "--expires", "2001-01-01T00:00:00Z", "--key", env["authorizer"].private,
                         "--out", env["tmp"] / "x")
    assert code == 2
    assert "--expires 2001-01-01T00:00:00Z is not after" in out["error"]["message"]
