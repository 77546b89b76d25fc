"""The site decision (installer/safeguards.py; docs/safeguards.md): the site identity and the bundle's
safeguards policy, enforced at install; site authorizations, made on the connected side and required
by sensitive sites, and, under a trust root (docs/trust.md), signed by the root's ``authorize`` role,
not by the legacy TRUSTDIR/authorize/ folder.

The authorization section also holds the few direct checks of the pieces the decision uses: the
signature check (``verify_authorization`` in installer/trust.py), the document
(installer/formats/authorization.py) and ``gapship authorize``, which writes it.
"""

from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gapship.installer.bundle.files import read_raw_bundle
from gapship.installer.errors import IntegrityError, PolicyError, TrustError, UsageError
from gapship.installer.formats.authorization import Authorization, BundleSelector
from gapship.installer.formats.root import LEGACY_VERSION, ROLE_AUTHORIZE, ROLE_RELEASE, Role, Root
from gapship.installer.formats.site import parse_site
from gapship.installer.safeguards import read_bundled_policy
from gapship.installer.trust import AuthorizeKeys, TrustStore, verify_authorization, verify_manifest
from gapship_testing import run, run_json, tree
from safeguards_testing import (  # noqa: F401
    MODELS, SITE_POLICY, add_authorize_key, authorization, build_bundle, digest_of, isolated_host, site_file,
)
from trust_testing import init_root

pytestmark = pytest.mark.usefixtures("isolated_host")
SAFEGUARDS = ("inference-audit-log", "content-filter")


# == the site file and the bundle's policy =========================================================


@pytest.fixture
def setup(tmp_path: Path, make_key, make_trust):  # type: ignore[no-untyped-def]
    key = make_key("release")
    return build_bundle(tmp_path, key), make_trust(key), tmp_path / "prefix", tmp_path / "audit.jsonl"


def install(bundle: Path, trust: Path, prefix: Path, log: Path, *args: str | Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    return run_json("install", bundle, "--trust", trust, "--prefix", prefix, "--audit-log", log, *args)


# -- the site file ---------------------------------------------------------------------------------


def test_parses_a_site_file() -> None:
    parsed = parse_site(b'site_id = "agency-x"\nsafeguards = ["content-filter", "inference-audit-log"]\n', source="s")
    assert parsed.site_id == "agency-x"
    assert parsed.safeguards == ("content-filter", "inference-audit-log")


@pytest.mark.parametrize("text, problem", [
    ('site_id = "a"\n', "lacks safeguards"),
    ('safeguards = []\n', "lacks site_id"),
    ('site_id = "a"\nsafeguards = []\nsafeguard = ["x"]\n', "unknown key 'safeguard'"),
    ('site_id = "A B"\nsafeguards = []\n', "site_id 'A B' must be"),
    ('site_id = "a"\nsafeguards = "content-filter"\n', "must be a list"),
    ('site_id = "a"\nsafeguards = ["Content Filter"]\n', "'Content Filter' must be"),
    ('site_id = "a"\nsafeguards = ["x", "x"]\n', "lists a value twice"),
    ('site_id = \n', "not valid TOML"),
])
def test_rejects_malformed_site_file(text: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        parse_site(text.encode(), source="site.toml")


def test_rejects_missing_explicit_site_file(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    code, out = install(bundle, trust, prefix, log, "--site-config", tmp_path / "nope.toml")
    assert code == 2
    assert "nope.toml" in out["error"]["message"] and "does not exist" in out["error"]["message"]
    assert not prefix.exists()


def test_default_site_file_is_used_when_present(setup, isolated_host) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    isolated_host.default_site.parent.mkdir(parents=True)
    isolated_host.default_site.write_text('site_id = "nowhere"\nsafeguards = []\n')
    code, out = install(bundle, trust, prefix, log)
    assert code == 5
    assert "site 'nowhere' is not allowed" in out["error"]["message"]


# -- enforcement -----------------------------------------------------------------------------------


def test_allowed_site_installs(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    code, out = install(bundle, trust, prefix, log, "--site-config", site_file(tmp_path, "demo-site", "inference-audit-log"))
    assert code == 0, out
    assert out["site"]["site_id"] == "demo-site"
    active = prefix / "demo" / "current"
    for rel, data in MODELS["tiny"].items():
        assert (active / "models" / "tiny" / rel).read_bytes() == data
    assert (active / "safeguards" / "policy.toml").read_bytes() == SITE_POLICY
    effective = json.loads((active / "effective-policy.json").read_bytes())
    assert effective["site"]["site_id"] == "demo-site"
    assert effective["required_safeguards"] == ["inference-audit-log"]
    assert effective["prohibited_uses"] == ["weapons targeting"]
    assert effective["manifest_digest"] == out["manifest_digest"]


def test_safeguards_and_effective_policy_are_read_only(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    code, out = install(bundle, trust, prefix, log, "--site-config", site_file(tmp_path, "demo-site", "inference-audit-log"))
    assert code == 0, out
    version = prefix / "demo" / "1.0.0"
    assert stat.S_IMODE((version / "safeguards").stat().st_mode) == 0o555
    assert stat.S_IMODE((version / "safeguards" / "policy.toml").stat().st_mode) == 0o444
    assert stat.S_IMODE((version / "effective-policy.json").stat().st_mode) == 0o444


def test_rejects_unknown_site(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    code, out = install(bundle, trust, prefix, log, "--site-config", site_file(tmp_path, "elsewhere", "content-filter"))
    assert code == 5
    assert out["error"]["message"].startswith("site 'elsewhere' is not allowed by the policy of demo 1.0.0")
    assert "agency-x, demo-site, lab" in out["error"]["message"]
    assert tree(prefix) == {}


def test_rejects_missing_safeguard_and_names_it(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    code, out = install(bundle, trust, prefix, log, "--site-config", site_file(tmp_path, "demo-site", "content-filter"))
    assert code == 5
    assert "site 'demo-site' lacks required safeguard(s): inference-audit-log" in out["error"]["message"]
    assert out["error"]["subject"] == "inference-audit-log"
    assert tree(prefix) == {}


def test_model_not_enabled_for_site_is_left_out(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    code, out = install(bundle, trust, prefix, log, "--site-config", site_file(tmp_path, "demo-site", "inference-audit-log"))
    assert code == 0, out
    version = prefix / "demo" / "1.0.0"
    assert not (version / "models" / "big").exists()
    assert sorted(p.name for p in (version / "models").iterdir()) == ["tiny"]
    receipt = json.loads((version / "receipt.json").read_bytes())
    assert receipt["site"]["models_installed"] == ["tiny"]
    assert receipt["site"]["models_skipped"] == ["big"]
    assert json.loads((version / "effective-policy.json").read_bytes())["models"]["not_enabled"] == ["big"]


def test_rejects_site_with_no_enabled_model(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    code, out = install(bundle, trust, prefix, log, "--site-config", site_file(tmp_path, "lab"))
    assert code == 5
    assert "no model of demo 1.0.0 is enabled for site 'lab'" in out["error"]["message"]
    assert tree(prefix) == {}


def test_rejects_sensitive_site_without_authorization(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    site = site_file(tmp_path, "agency-x", "inference-audit-log", "content-filter")
    code, out = install(bundle, trust, prefix, log, "--site-config", site)
    assert code == 5
    assert "site 'agency-x' is sensitive" in out["error"]["message"]
    assert "needs a site authorization" in out["error"]["message"]
    assert tree(prefix) == {}


def test_verify_reports_the_site_refusal(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, _prefix, log = setup
    code, out = run_json("verify", bundle, "--trust", trust, "--audit-log", log,
                         "--site-config", site_file(tmp_path, "elsewhere"))
    assert code == 5
    assert "site 'elsewhere' is not allowed" in out["error"]["message"]
    code, out = run_json("verify", bundle, "--trust", trust, "--audit-log", log,
                         "--site-config", site_file(tmp_path, "demo-site", "inference-audit-log"))
    assert code == 0, out
    assert out["site"]["models_skipped"] == ["big"]


def test_host_without_site_file_installs_everything(setup) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, _log = setup
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix)
    assert code == 0, out
    assert out["site"] is None
    assert (prefix / "demo" / "current" / "models" / "big" / "weights.bin").is_file()
    assert not (prefix / "demo" / "current" / "effective-policy.json").exists()


def test_rejects_authorization_flag_without_site_file(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    code, out = install(bundle, trust, prefix, log, "--authorization", tmp_path)
    assert code == 2
    assert "--authorization needs a site file" in out["error"]["message"]
    assert not (prefix / "demo").exists()


# -- reading the policy before installing ----------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [512, 1024, 4096])
def test_reads_policy_from_the_chunks_that_hold_it(tmp_path: Path, make_key, make_trust, chunk_size: int) -> None:  # type: ignore[no-untyped-def]
    key = make_key("release")
    bundle = build_bundle(tmp_path, key, chunk_size=chunk_size)
    verified = verify_manifest(read_raw_bundle(bundle), trust=TrustStore.from_dir(make_trust(key)))
    policy = read_bundled_policy(bundle, verified)
    assert sorted(policy.sites) == ["agency-x", "demo-site", "lab"]


def policy_chunk(bundle: Path) -> tuple[Path, int]:
    """The chunk file holding the policy's first byte, and that byte's offset inside it."""
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    entry = next(f for c in manifest["components"] for f in c["files"] if f["path"] == "safeguards/policy.toml")
    index, inner = divmod(entry["offset"], manifest["chunk_size"])
    return bundle / "chunks" / f"{index:05d}.bin", inner


def test_rejects_tampered_policy_before_writing_anything(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    chunk, inner = policy_chunk(bundle)
    data = bytearray(chunk.read_bytes())
    data[inner:inner + 14] = b"schema_version"[::-1]
    chunk.write_bytes(bytes(data))
    code, out = install(bundle, trust, prefix, log, "--site-config", site_file(tmp_path, "demo-site", "inference-audit-log"))
    assert code == 3
    assert "file 'safeguards/policy.toml' does not match its sha256 hash" in out["error"]["message"]
    assert not (prefix / "demo").exists()


def test_rejects_truncated_policy_chunk(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    chunk, inner = policy_chunk(bundle)
    chunk.write_bytes(chunk.read_bytes()[:inner + 3])
    verified = verify_manifest(read_raw_bundle(bundle), trust=TrustStore.from_dir(trust))
    with pytest.raises(IntegrityError, match="truncated"):
        read_bundled_policy(bundle, verified)


def test_rejects_damaged_chunk_in_a_skipped_model(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Files left out are still hashed as part of their chunks: damage there is still damage."""
    bundle, trust, prefix, log = setup
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    entry = next(f for c in manifest["components"] if c["name"] == "big" for f in c["files"])
    index, inner = divmod(entry["offset"], manifest["chunk_size"])
    chunk = bundle / "chunks" / f"{index:05d}.bin"
    data = bytearray(chunk.read_bytes())
    data[inner] ^= 0xFF
    chunk.write_bytes(bytes(data))
    code, out = install(bundle, trust, prefix, log, "--site-config", site_file(tmp_path, "demo-site", "inference-audit-log"))
    assert code == 3
    assert f"chunks/{index:05d}.bin does not match its sha256 hash" in out["error"]["message"]
    assert not (prefix / "demo").exists()  # a refused first install leaves nothing behind


def test_text_output_names_the_site_and_left_out_models(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, trust, prefix, log = setup
    result = run("install", bundle, "--trust", trust, "--prefix", prefix, "--audit-log", log,
                 "--site-config", site_file(tmp_path, "demo-site", "inference-audit-log"))
    assert result.exit_code == 0, result.output
    assert "site demo-site: allowed" in result.stdout
    assert "left out: big" in result.stdout


# == site authorizations ===========================================================================


@pytest.fixture
def env(tmp_path: Path, make_key, make_trust):  # type: ignore[no-untyped-def]
    release, authorizer = make_key("release"), make_key("authorizer")
    trust = make_trust(release)
    add_authorize_key(trust, authorizer)
    bundle = build_bundle(tmp_path, release)
    return dict(release=release, authorizer=authorizer, trust=trust, bundle=bundle, prefix=tmp_path / "prefix",
                log=tmp_path / "audit.jsonl", site=site_file(tmp_path, "agency-x", *SAFEGUARDS), tmp=tmp_path)


def install_authorized(env, *args: str | Path, site: Path | None = None):  # type: ignore[no-untyped-def]
    return run_json("install", env["bundle"], "--trust", env["trust"], "--prefix", env["prefix"],
                    "--audit-log", env["log"], "--site-config", site or env["site"], *args)


def test_sensitive_site_installs_with_valid_authorization(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]))
    code, out = install_authorized(env, "--authorization", auth)
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
    code, out = install_authorized(env, "--authorization", auth)
    assert code == 0, out


def test_authorization_carried_in_the_bundle(env) -> None:  # type: ignore[no-untyped-def]
    carried = authorization(env["bundle"], env["authorizer"], manifest_digest=digest_of(env["bundle"]))
    assert carried.parent == env["bundle"] / "authorizations"
    code, out = install_authorized(env)
    assert code == 0, out
    assert len(out["site"]["authorizations"]) == 1


def test_carried_authorization_for_another_site_is_not_used(env) -> None:  # type: ignore[no-untyped-def]
    authorization(env["bundle"], env["authorizer"], site_id="demo-site", manifest_digest=digest_of(env["bundle"]))
    code, out = install_authorized(env)
    assert code == 5
    assert "is for site 'demo-site', not this site 'agency-x'" in out["error"]["message"]
    code, out = install_authorized(env, site=site_file(env["tmp"], "demo-site", "inference-audit-log"))
    assert code == 0, out


def test_authorization_adds_required_safeguards(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]),
                         require=("two-person-rule", "cleared-operator"))
    code, out = install_authorized(env, "--authorization", auth)
    assert code == 5
    assert "lacks required safeguard(s): cleared-operator, two-person-rule" in out["error"]["message"]
    assert tree(env["prefix"]) == {}
    site = site_file(env["tmp"], "agency-x", *SAFEGUARDS, "two-person-rule", "cleared-operator")
    code, out = install_authorized(env, "--authorization", auth, site=site)
    assert code == 0, out
    assert "two-person-rule" in out["site"]["required_safeguards"]


def test_rejects_authorization_for_another_site(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], site_id="agency-y",
                         manifest_digest=digest_of(env["bundle"]))
    code, out = install_authorized(env, "--authorization", auth)
    assert code == 5
    assert "is for site 'agency-y', not this site 'agency-x'" in out["error"]["message"]
    assert tree(env["prefix"]) == {}


def test_rejects_authorization_for_another_bundle(env, make_key) -> None:  # type: ignore[no-untyped-def]
    other = build_bundle(env["tmp"], env["release"], version="2.0.0")
    by_digest = authorization(env["tmp"] / "auth1", env["authorizer"], manifest_digest=digest_of(other))
    code, out = install_authorized(env, "--authorization", by_digest)
    assert code == 5
    assert f"is for manifest {digest_of(other)}, not demo 1.0.0" in out["error"]["message"]
    by_range = authorization(env["tmp"] / "auth2", env["authorizer"], name="demo", versions=">=2")
    code, out = install_authorized(env, "--authorization", by_range)
    assert code == 5
    assert "is for demo >=2, not demo 1.0.0" in out["error"]["message"]
    by_name = authorization(env["tmp"] / "auth3", env["authorizer"], name="other", versions=">=0")
    code, out = install_authorized(env, "--authorization", by_name)
    assert code == 5
    assert "is for other >=0" in out["error"]["message"]
    assert tree(env["prefix"]) == {}


def test_rejects_expired_authorization(env) -> None:  # type: ignore[no-untyped-def]
    issued = datetime.now(timezone.utc) - timedelta(days=31)
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]),
                         expires="30d", now=issued)
    code, out = install_authorized(env, "--authorization", auth)
    assert code == 5
    assert "expired at" in out["error"]["message"]
    assert tree(env["prefix"]) == {}


def test_rejects_authorization_signed_by_release_key(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["release"], manifest_digest=digest_of(env["bundle"]))
    code, out = install_authorized(env, "--authorization", auth)
    assert code == 4
    assert f"{env['release'].keyid}.ed25519.sig: untrusted (key is not in the authorize role)" in out["error"]["message"]
    assert tree(env["prefix"]) == {}


def test_rejects_authorization_edited_after_signing(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], site_id="agency-y",
                         manifest_digest=digest_of(env["bundle"]))
    doc = auth / "authorization.json"
    doc.write_bytes(doc.read_bytes().replace(b'"agency-y"', b'"agency-x"'))
    code, out = install_authorized(env, "--authorization", auth)
    assert code == 4
    assert f"{env['authorizer'].keyid}.ed25519.sig: invalid" in out["error"]["message"]
    assert tree(env["prefix"]) == {}


def test_rejects_unsigned_authorization(env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]))
    for sig in (auth / "signatures").iterdir():
        sig.unlink()
    code, out = install_authorized(env, "--authorization", auth)
    assert code == 4
    assert "carries no signature" in out["error"]["message"]


def test_rejects_key_holding_both_roles(env) -> None:  # type: ignore[no-untyped-def]
    add_authorize_key(env["trust"], env["release"])
    auth = authorization(env["tmp"] / "auth", env["release"], manifest_digest=digest_of(env["bundle"]))
    code, out = install_authorized(env, "--authorization", auth)
    assert code == 4
    assert "is both a release key and an authorize key" in out["error"]["message"]


def test_rejects_explicit_authorization_that_does_not_apply_even_at_a_plain_site(env) -> None:  # type: ignore[no-untyped-def]
    """An authorization the admin names must apply: a mistake is not silently ignored."""
    auth = authorization(env["tmp"] / "auth", env["authorizer"], manifest_digest=digest_of(env["bundle"]))
    code, out = install_authorized(env, "--authorization", auth, site=site_file(env["tmp"], "demo-site", "inference-audit-log"))
    assert code == 5
    assert "is for site 'agency-x', not this site 'demo-site'" in out["error"]["message"]


# -- the document and the pure verification --------------------------------------------------------


def authorize_keys(*keys, threshold: int = 1) -> AuthorizeKeys:  # type: ignore[no-untyped-def]
    """The authorize role of a (legacy-form) root holding just these keys."""
    role = Role(keyids=tuple(k.keyid for k in keys), threshold=threshold)
    root = Root(version=LEGACY_VERSION, expires=None, keys={k.keyid: k.key.public for k in keys},
                roles={ROLE_RELEASE: Role(keyids=(), threshold=1), ROLE_AUTHORIZE: role})
    return AuthorizeKeys.from_root(root, source="test")


def signed(doc: bytes, *keys) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {f"{k.keyid}.ed25519.sig": k.key.sign(doc) for k in keys}


def sample() -> Authorization:
    return Authorization(site="agency-x", bundle=BundleSelector(name="demo", versions="<2,>=1"),
                         issued="2030-01-01T00:00:00Z", expires="2030-02-01T00:00:00Z",
                         require_safeguards=("two-person-rule",))


def test_rejects_below_authorize_threshold(make_key) -> None:  # type: ignore[no-untyped-def]
    a, b = make_key("a"), make_key("b")
    doc = sample().to_bytes()
    keys = authorize_keys(a, b, threshold=2)
    with pytest.raises(TrustError, match="needs 2 valid signatures from distinct authorize keys, found 1"):
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


# == site authorizations under a trust root: the authorize role ====================================


@pytest.fixture
def root_env(tmp_path: Path, make_key):  # type: ignore[no-untyped-def]
    root, release, authorizer = make_key("root"), make_key("release"), make_key("authorizer")
    trust = tmp_path / "trust"
    init_root(trust, root=[root], release=[release], authorize=[authorizer])
    return dict(release=release, authorizer=authorizer, trust=trust, bundle=build_bundle(tmp_path, release),
                prefix=tmp_path / "prefix", site=site_file(tmp_path, "agency-x", *SAFEGUARDS), tmp=tmp_path)


def install_under_root(root_env, auth: Path):  # type: ignore[no-untyped-def]
    return run_json("install", root_env["bundle"], "--trust", root_env["trust"], "--prefix", root_env["prefix"],
                    "--audit-log", root_env["tmp"] / "audit.jsonl", "--site-config", root_env["site"], "--authorization", auth)


def test_sensitive_site_installs_with_authorization_from_the_authorize_role(root_env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(root_env["tmp"] / "auth", root_env["authorizer"], manifest_digest=digest_of(root_env["bundle"]))
    code, out = install_under_root(root_env, auth)
    assert code == 0, out
    assert out["site"]["authorizations"][0]["signers"] == [root_env["authorizer"].keyid]


def test_rejects_authorization_signed_by_a_release_key_of_the_root(root_env) -> None:  # type: ignore[no-untyped-def]
    auth = authorization(root_env["tmp"] / "auth", root_env["release"], manifest_digest=digest_of(root_env["bundle"]))
    code, out = install_under_root(root_env, auth)
    assert code == 4, out
    assert out["error"]["kind"] == "trust" and "authorize" in out["error"]["message"]
    assert tree(root_env["prefix"] / "demo").keys() <= {".lock"}


def test_rejects_authorization_when_the_root_has_no_authorize_role(root_env, make_key) -> None:  # type: ignore[no-untyped-def]
    root, release = make_key("root2"), root_env["release"]
    trust = root_env["tmp"] / "trust-no-authorize"
    init_root(trust, root=[root], release=[release])
    auth = authorization(root_env["tmp"] / "auth", root_env["authorizer"], manifest_digest=digest_of(root_env["bundle"]))
    code, out = run_json("install", root_env["bundle"], "--trust", trust, "--prefix", root_env["prefix"],
                         "--audit-log", root_env["tmp"] / "audit.jsonl", "--site-config", root_env["site"], "--authorization", auth)
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
