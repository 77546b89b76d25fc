"""Roles and algorithms hold for every signed document, decided in one place (issue 13, class 1;
docs/security-report.md, "Roles and algorithms, decided in one place").

Every signed document kind goes through one decision, ``verify_role`` in installer/trust.py: the
manifest (release role), a trust root and each of its rotations (root role), a site authorization
(authorize role). The attacks below try to get a document past a rule that another kind obeys:
an authorization with one algorithm where the root requires two, one key holding the release and
the authorize role (so one stolen key signs a bundle AND authorizes a sensitive site), and one key
counted twice toward a threshold. Each path is attacked: a root when it is made (``trust init``,
``add-key``, ``renew``), rotated (a bundle's ``roots/``, ``trust update``, the history catch-up),
and verified (the site's own ``root.json``, legacy ``*.pub`` folders).
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.roots import sign_root
from gapship.installer.crypto.keys import ED25519, ML_DSA_87
from gapship.installer.errors import TrustError
from gapship.installer.formats.authorization import Authorization, BundleSelector
from gapship.installer.formats.root import ROLE_AUTHORIZE, ROLE_RELEASE, ROLE_ROOT, Role, Root
from gapship.installer.formats.timestamps import format_time, utc_now
from gapship.installer.host.trustdir import write_root
from gapship.installer.trust import AuthorizeKeys, TrustStore, verify_authorization
from gapship_testing import KeyPair, run, run_json
from safeguards_testing import (  # noqa: F401
    authorization, build_bundle, digest_of, isolated_host, site_file,
)

pytestmark = pytest.mark.usefixtures("isolated_host")

SAFEGUARDS = ("inference-audit-log", "content-filter")  # what agency-x (sensitive) needs


@dataclass(frozen=True)
class Keys:
    root: KeyPair
    root2: KeyPair
    release: KeyPair
    authorize: KeyPair  # Ed25519
    authorize_pq: KeyPair  # ML-DSA-87
    release_pq: KeyPair  # ML-DSA-87


def _pair(folder: Path, name: str, algorithm: str = ED25519) -> KeyPair:
    private, public, _ = keygen(name, folder, algorithm)
    return KeyPair(name, private, public, SigningKey.load(private))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("role-keys")
    return Keys(root=_pair(folder, "root"), root2=_pair(folder, "root2"), release=_pair(folder, "release"),
                authorize=_pair(folder, "authorize"), authorize_pq=_pair(folder, "authorize-pq", ML_DSA_87),
                release_pq=_pair(folder, "release-pq", ML_DSA_87))


@pytest.fixture(scope="module")
def bundle_template(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    """demo 1.0.0 with a policy whose site agency-x is sensitive, signed by the release key."""
    return build_bundle(tmp_path_factory.mktemp("role-bundle"), keys.release)


@pytest.fixture
def bundle(tmp_path: Path, bundle_template: Path) -> Path:
    return Path(shutil.copytree(bundle_template, tmp_path / "bundle"))


def craft_root(*, version: int, roles: dict[str, list[KeyPair]], sign_with: list[KeyPair],
               thresholds: dict[str, int] | None = None, require: dict[str, tuple[str, ...]] | None = None) -> bytes:
    """A root signed by ``sign_with``, built with the document model alone, past any bundler check: what
    an authority running an older gapship (or a hand-written root) could have made."""
    members = {k.keyid: k.key.public for pairs in roles.values() for k in pairs}
    root = Root(version=version, expires=format_time(utc_now() + timedelta(days=365)), keys=members,
                roles={name: Role(keyids=tuple(dict.fromkeys(k.keyid for k in pairs)),
                                  threshold=(thresholds or {}).get(name, 1),
                                  require_algorithms=(require or {}).get(name, ()))
                       for name, pairs in roles.items()},
                names={k.keyid: k.name for pairs in roles.values() for k in pairs})
    return sign_root(root, [k.key for k in sign_with]).to_bytes()


def site_trust(tmp_path: Path, data: bytes, name: str = "trust") -> Path:
    """A site's trust directory whose anchor (root.json and roots/1.root.json) is ``data``."""
    folder = tmp_path / name
    folder.mkdir()
    write_root(folder, json.loads(data)["signed"]["version"], data)
    return folder


def trust_init(trust: Path, keys: Keys, *extra: str | Path) -> tuple[int, dict[str, Any]]:
    return run_json("trust", "init", "--trust", trust, "--root-key", keys.root.public,
                    "--release-key", keys.release.public, "--sign-with", keys.root.private, *extra)


def install(bundle: Path, trust: Path, tmp_path: Path, *args: str | Path) -> tuple[int, dict[str, Any]]:
    return run_json("install", bundle, "--trust", trust, "--prefix", tmp_path / "prefix",
                    "--audit-log", tmp_path / "audit.jsonl",
                    "--site-config", site_file(tmp_path, "agency-x", *SAFEGUARDS), *args)


def assert_refused(code: int, out: dict[str, Any], expected: int, *needles: str) -> str:
    assert code == expected, out
    message = out["error"]["message"]
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return str(message)


def assert_nothing_installed(tmp_path: Path) -> None:
    home = tmp_path / "prefix" / "demo"
    assert not home.exists() or sorted(p.name for p in home.iterdir()) in ([], [".lock"])


def root_version(trust: Path) -> int:
    return int(json.loads((trust / "root.json").read_bytes())["signed"]["version"])


# == algorithms: an authorization obeys require_algorithms like a manifest and a root ===============


@pytest.fixture
def hybrid_trust(tmp_path: Path, keys: Keys) -> Path:
    """A root (made by `gapship trust init`) whose authorize role needs Ed25519 AND ML-DSA-87."""
    trust = tmp_path / "trust"
    code, out = trust_init(trust, keys, "--authorize-key", keys.authorize.public,
                           "--authorize-key", keys.authorize_pq.public,
                           "--require-algorithms", "authorize=ed25519,ml-dsa-87")
    assert code == 0, out
    return trust


def test_authorization_signed_with_ed25519_alone_is_refused_where_the_root_requires_hybrid(
        tmp_path: Path, keys: Keys, hybrid_trust: Path, bundle: Path) -> None:
    auth = authorization(tmp_path / "auth", keys.authorize, manifest_digest=digest_of(bundle))
    code, out = install(bundle, hybrid_trust, tmp_path, "--authorization", auth)
    assert_refused(code, out, 4, "ml-dsa-87", "authorize")
    assert out["error"]["subject"] == str(auth)
    assert_nothing_installed(tmp_path)


def test_authorization_signed_with_ml_dsa_alone_is_refused_where_the_root_requires_hybrid(
        tmp_path: Path, keys: Keys, hybrid_trust: Path, bundle: Path) -> None:
    auth = authorization(tmp_path / "auth", keys.authorize_pq, manifest_digest=digest_of(bundle))
    code, out = install(bundle, hybrid_trust, tmp_path, "--authorization", auth)
    assert_refused(code, out, 4, "ed25519", "authorize")
    assert_nothing_installed(tmp_path)


def test_authorization_carried_in_the_bundle_with_one_algorithm_is_refused_where_the_root_requires_hybrid(
        tmp_path: Path, keys: Keys, hybrid_trust: Path, bundle: Path) -> None:
    authorization(bundle, keys.authorize, manifest_digest=digest_of(bundle))  # into bundle/authorizations/
    code, out = install(bundle, hybrid_trust, tmp_path)
    assert_refused(code, out, 4, "ml-dsa-87")
    assert_nothing_installed(tmp_path)


def test_authorization_signed_in_both_algorithms_installs_where_the_root_requires_hybrid(
        tmp_path: Path, keys: Keys, hybrid_trust: Path, bundle: Path) -> None:
    """The control: the same root accepts the authorization once both halves are there."""
    auth = authorization(tmp_path / "auth", keys.authorize, manifest_digest=digest_of(bundle))
    doc = (auth / "authorization.json").read_bytes()
    (auth / "signatures" / f"{keys.authorize_pq.keyid}.ml-dsa-87.sig").write_bytes(keys.authorize_pq.key.sign(doc))
    code, out = install(bundle, hybrid_trust, tmp_path, "--authorization", auth)
    assert code == 0, out
    assert out["site"]["authorizations"][0]["signers"] == sorted([keys.authorize.keyid, keys.authorize_pq.keyid])


def test_authorization_verified_by_the_library_obeys_require_algorithms(keys: Keys) -> None:
    """The library path (a caller of verify_authorization without the CLI) gets the same decision."""
    root = Root(version=1, expires="2099-01-01T00:00:00Z",
                keys={k.keyid: k.key.public for k in (keys.root, keys.release, keys.authorize, keys.authorize_pq)},
                roles={ROLE_ROOT: Role((keys.root.keyid,), 1), ROLE_RELEASE: Role((keys.release.keyid,), 1),
                       ROLE_AUTHORIZE: Role((keys.authorize.keyid, keys.authorize_pq.keyid), 1,
                                            (ED25519, ML_DSA_87))})
    doc = Authorization(site="agency-x", bundle=BundleSelector(name="demo", versions="<2,>=1"),
                        issued="2030-01-01T00:00:00Z", expires="2030-02-01T00:00:00Z").to_bytes()
    ed_only = {f"{keys.authorize.keyid}.ed25519.sig": keys.authorize.key.sign(doc)}
    with pytest.raises(TrustError, match="ml-dsa-87"):
        verify_authorization(doc, ed_only, keys=AuthorizeKeys.from_root(root, source="test"), source="auth")
    both = {**ed_only, f"{keys.authorize_pq.keyid}.ml-dsa-87.sig": keys.authorize_pq.key.sign(doc)}
    verified = verify_authorization(doc, both, keys=AuthorizeKeys.from_root(root, source="test"), source="auth")
    assert verified.signers == tuple(sorted([keys.authorize.keyid, keys.authorize_pq.keyid]))


def test_manifest_signed_with_ed25519_alone_is_refused_where_the_root_requires_hybrid(
        tmp_path: Path, keys: Keys, bundle: Path) -> None:
    """The same rule for the release role (it held before; kept here so every document kind is tested)."""
    trust = tmp_path / "trust"
    code, out = run_json("trust", "init", "--trust", trust, "--root-key", keys.root.public,
                         "--release-key", keys.release.public, "--release-key", keys.release_pq.public,
                         "--require-algorithms", "release=ed25519,ml-dsa-87", "--sign-with", keys.root.private)
    assert code == 0, out
    assert_refused(*run_json("verify", bundle, "--trust", trust), 4, "ml-dsa-87", "release")


def test_root_rotation_signed_with_ed25519_alone_is_refused_where_the_root_role_requires_hybrid(
        tmp_path: Path, keys: Keys, bundle: Path) -> None:
    """And for the root role: a rotation carried in a bundle needs both algorithms of the old root keys."""
    pq_root = keys.authorize_pq  # any ML-DSA key not otherwise used by this root
    v1 = craft_root(version=1, roles={ROLE_ROOT: [keys.root, pq_root], ROLE_RELEASE: [keys.release]},
                    sign_with=[keys.root, pq_root], require={ROLE_ROOT: (ED25519, ML_DSA_87)})
    trust = site_trust(tmp_path, v1)
    v2 = craft_root(version=2, roles={ROLE_ROOT: [keys.root, pq_root], ROLE_RELEASE: [keys.release]},
                    sign_with=[keys.root], require={ROLE_ROOT: (ED25519, ML_DSA_87)})
    (bundle / "roots").mkdir()
    (bundle / "roots" / "2.root.json").write_bytes(v2)
    assert_refused(*run_json("verify", bundle, "--trust", trust), 4, "ml-dsa-87", "root")
    assert root_version(trust) == 1


# == one key, two roles: refused when a root is made ===============================================


def test_trust_init_refuses_one_key_as_release_and_authorize_key(tmp_path: Path, keys: Keys) -> None:
    trust = tmp_path / "authority"
    code, out = trust_init(trust, keys, "--authorize-key", keys.release.public)
    assert_refused(code, out, 2, keys.release.keyid[:16], "release", "authorize")
    assert not (trust / "root.json").exists()


def test_trust_add_key_refuses_a_release_key_into_the_authorize_role(tmp_path: Path, keys: Keys) -> None:
    trust = tmp_path / "authority"
    assert trust_init(trust, keys, "--authorize-key", keys.authorize.public)[0] == 0
    code, out = run_json("trust", "add-key", "--trust", trust, keys.release.public, "--role", "authorize",
                         "--sign-with", keys.root.private)
    assert_refused(code, out, 2, keys.release.keyid[:16], "release", "authorize")
    assert root_version(trust) == 1 and not (trust / "roots" / "2.root.json").exists()


def test_trust_add_key_refuses_an_authorize_key_into_the_release_role(tmp_path: Path, keys: Keys) -> None:
    trust = tmp_path / "authority"
    assert trust_init(trust, keys, "--authorize-key", keys.authorize.public)[0] == 0
    code, out = run_json("trust", "add-key", "--trust", trust, keys.authorize.public, "--role", "release",
                         "--sign-with", keys.root.private)
    assert_refused(code, out, 2, keys.authorize.keyid[:16])
    assert root_version(trust) == 1


def test_trust_renew_refuses_to_carry_a_shared_key_forward_and_remove_key_repairs_it(
        tmp_path: Path, keys: Keys) -> None:
    """An authority whose v1 (made before this rule) gives one key both roles cannot sign it again
    unchanged, nor add to it; taking the key out of the authorize role (which drops the role when it
    was its last key), then adding a separate authorize key, is the way forward, each step a root
    sites accept."""
    trust = site_trust(tmp_path, craft_root(version=1, roles={
        ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release], ROLE_AUTHORIZE: [keys.release]},
        sign_with=[keys.root]), name="authority")
    code, out = run_json("trust", "renew", "--trust", trust, "--sign-with", keys.root.private)
    assert_refused(code, out, 2, keys.release.keyid[:16])
    assert root_version(trust) == 1
    code, out = run_json("trust", "add-key", "--trust", trust, keys.authorize.public, "--role", "authorize",
                         "--sign-with", keys.root.private)
    assert_refused(code, out, 2, keys.release.keyid[:16])
    code, out = run_json("trust", "remove-key", "--trust", trust, keys.release.keyid, "--role", "authorize",
                         "--sign-with", keys.root.private)
    assert code == 0, out
    assert root_version(trust) == 2  # the authorize role had only that key: it is gone in v2
    code, out = run_json("trust", "add-key", "--trust", trust, keys.authorize.public, "--role", "authorize",
                         "--sign-with", keys.root.private)
    assert code == 0, out
    assert root_version(trust) == 3
    roles = json.loads((trust / "root.json").read_bytes())["signed"]["roles"]
    assert roles["authorize"]["keyids"] == [keys.authorize.keyid] and roles["release"]["keyids"] == [keys.release.keyid]


# == one key, two roles: refused when a root is verified, rotated, carried ========================


@pytest.fixture
def shared_key_anchor(tmp_path: Path, keys: Keys) -> Path:
    """A site whose trusted root.json (v1) gives the release key the authorize role too."""
    return site_trust(tmp_path, craft_root(version=1, roles={
        ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release], ROLE_AUTHORIZE: [keys.release]},
        sign_with=[keys.root]))


def test_one_stolen_key_cannot_sign_a_bundle_and_authorize_a_sensitive_site(
        tmp_path: Path, keys: Keys, shared_key_anchor: Path, bundle: Path) -> None:
    """The attack of the issue: the release key also signs the authorization. Refused, exit 4, nothing
    installed, whatever the authorization says."""
    auth = authorization(tmp_path / "auth", keys.release, manifest_digest=digest_of(bundle))
    message = assert_refused(*install(bundle, shared_key_anchor, tmp_path, "--authorization", auth), 4,
                             keys.release.keyid[:16], "both a release key and an authorize key")
    assert "trust root v1" in message
    assert_nothing_installed(tmp_path)


def test_verify_refuses_a_root_whose_key_holds_release_and_authorize(
        tmp_path: Path, keys: Keys, shared_key_anchor: Path, bundle: Path) -> None:
    """A root that breaks the rule decides nothing for the release role either: fail closed."""
    assert_refused(*run_json("verify", bundle, "--trust", shared_key_anchor), 4,
                   keys.release.keyid[:16], "both a release key and an authorize key")
    text = run("verify", bundle, "--trust", shared_key_anchor)
    assert text.exit_code == 4 and len(text.stderr.splitlines()) == 1


def test_trust_show_names_a_trusted_root_whose_key_holds_release_and_authorize(
        keys: Keys, shared_key_anchor: Path) -> None:
    """Such a root (trusted before the rule) decides nothing: trust show says so before an install does."""
    code, data = run_json("trust", "show", "--trust", shared_key_anchor)
    assert code == 0, data
    assert len(data["problems"]) == 1 and "both a release key and an authorize key" in data["problems"][0]
    text = run("trust", "show", "--trust", shared_key_anchor)
    assert any(line.startswith("  PROBLEM: trust root v1: key " + keys.release.keyid[:16])
               for line in text.stdout.splitlines()), text.stdout


def test_trust_show_lists_no_problem_for_a_root_that_keeps_the_roles_apart(tmp_path: Path, keys: Keys) -> None:
    trust = site_trust(tmp_path, craft_root(version=1, roles={
        ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release], ROLE_AUTHORIZE: [keys.authorize]},
        sign_with=[keys.root]))
    code, data = run_json("trust", "show", "--trust", trust)
    assert code == 0 and data["problems"] == [], data
    assert "PROBLEM" not in run("trust", "show", "--trust", trust).stdout


def test_authorization_library_path_refuses_a_root_whose_key_holds_both_roles(keys: Keys) -> None:
    """verify_authorization called directly, with a root that breaks the rule, refuses too."""
    root = Root(version=1, expires="2099-01-01T00:00:00Z",
                keys={k.keyid: k.key.public for k in (keys.root, keys.release)},
                roles={ROLE_ROOT: Role((keys.root.keyid,), 1), ROLE_RELEASE: Role((keys.release.keyid,), 1),
                       ROLE_AUTHORIZE: Role((keys.release.keyid,), 1)})
    doc = Authorization(site="agency-x", bundle=BundleSelector(name="demo", versions="<2,>=1"),
                        issued="2030-01-01T00:00:00Z", expires="2030-02-01T00:00:00Z").to_bytes()
    sigs = {f"{keys.release.keyid}.ed25519.sig": keys.release.key.sign(doc)}
    with pytest.raises(TrustError, match="both a release key and an authorize key"):
        verify_authorization(doc, sigs, keys=AuthorizeKeys.from_root(root, source="test"), source="auth")


def test_rotation_carried_in_a_bundle_to_a_root_with_a_shared_key_is_refused(
        tmp_path: Path, keys: Keys, bundle: Path) -> None:
    """A properly root-signed v2 that hands the release key the authorize role: refused as a bad root,
    and never written to the site's trust directory."""
    v1 = craft_root(version=1, roles={ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release],
                                      ROLE_AUTHORIZE: [keys.authorize]}, sign_with=[keys.root])
    trust = site_trust(tmp_path, v1)
    v2 = craft_root(version=2, roles={ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release],
                                      ROLE_AUTHORIZE: [keys.authorize, keys.release]}, sign_with=[keys.root])
    (bundle / "roots").mkdir()
    (bundle / "roots" / "2.root.json").write_bytes(v2)
    auth = authorization(tmp_path / "auth", keys.release, manifest_digest=digest_of(bundle))
    assert_refused(*install(bundle, trust, tmp_path, "--authorization", auth), 4,
                   "roots/2.root.json", keys.release.keyid[:16], "both a release key and an authorize key")
    assert root_version(trust) == 1 and not (trust / "roots" / "2.root.json").exists()
    assert_nothing_installed(tmp_path)


def test_trust_update_refuses_a_root_with_a_shared_key(tmp_path: Path, keys: Keys) -> None:
    trust = site_trust(tmp_path, craft_root(version=1, roles={ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release]},
                                            sign_with=[keys.root]))
    v2 = tmp_path / "2.root.json"
    v2.write_bytes(craft_root(version=2, roles={ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release],
                                                ROLE_AUTHORIZE: [keys.release]}, sign_with=[keys.root]))
    assert_refused(*run_json("trust", "update", "--trust", trust, v2), 4,
                   keys.release.keyid[:16], "both a release key and an authorize key")
    assert root_version(trust) == 1


def test_history_file_with_a_shared_key_is_not_caught_up_on(tmp_path: Path, keys: Keys, bundle: Path) -> None:
    """The crash catch-up path (roots/2.root.json written, root.json still v1) checks the same rule."""
    trust = site_trust(tmp_path, craft_root(version=1, roles={ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release]},
                                            sign_with=[keys.root]))
    (trust / "roots" / "2.root.json").write_bytes(craft_root(version=2, roles={
        ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release], ROLE_AUTHORIZE: [keys.release]}, sign_with=[keys.root]))
    assert_refused(*run_json("verify", bundle, "--trust", trust), 4, "both a release key and an authorize key")
    with pytest.raises(TrustError, match="both a release key and an authorize key"):
        TrustStore.from_dir(trust)


def test_site_with_a_shared_key_root_recovers_through_a_rotation_that_separates_the_roles(
        tmp_path: Path, keys: Keys, shared_key_anchor: Path, bundle: Path) -> None:
    """The way out for a site that trusted such a root before this rule: its root keys still sign the
    next root, and once that root keeps the roles apart, installs work again."""
    v2 = craft_root(version=2, roles={ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release],
                                      ROLE_AUTHORIZE: [keys.authorize]}, sign_with=[keys.root])
    (bundle / "roots").mkdir()
    (bundle / "roots" / "2.root.json").write_bytes(v2)
    auth = authorization(tmp_path / "auth", keys.authorize, manifest_digest=digest_of(bundle))
    code, out = install(bundle, shared_key_anchor, tmp_path, "--authorization", auth)
    assert code == 0, out
    assert out["root_updates"] == [2] and root_version(shared_key_anchor) == 2


def test_legacy_key_in_both_the_release_and_the_authorize_folder_is_refused(
        tmp_path: Path, keys: Keys, bundle: Path) -> None:
    """Legacy mode (a folder of *.pub) keeps the same rule through the same decision: refused for the
    authorization and for the manifest alike."""
    trust = tmp_path / "legacy"
    (trust / "authorize").mkdir(parents=True)
    shutil.copy(keys.release.public, trust / keys.release.public.name)
    shutil.copy(keys.release.public, trust / "authorize" / keys.release.public.name)
    auth = authorization(tmp_path / "auth", keys.release, manifest_digest=digest_of(bundle))
    assert_refused(*install(bundle, trust, tmp_path, "--authorization", auth), 4,
                   keys.release.keyid[:16], "both a release key and an authorize key")
    assert_refused(*run_json("verify", bundle, "--trust", trust), 4, "both a release key and an authorize key")
    assert_nothing_installed(tmp_path)


# == thresholds: one key never counts twice ========================================================


def test_root_listing_one_key_under_a_second_id_is_refused(tmp_path: Path, keys: Keys, bundle: Path) -> None:
    """Key ids are the hash of the key: the same key under another id is a malformed root."""
    data = json.loads(craft_root(version=1, roles={ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release]},
                                 sign_with=[keys.root]))
    signed = data["signed"]
    fake = "f" * 64
    signed["keys"][fake] = signed["keys"][keys.release.keyid]
    signed["roles"]["release"] = {"keyids": sorted([keys.release.keyid, fake]), "threshold": 2}
    root_bytes = json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()
    data["signatures"] = [{"algorithm": "ed25519", "keyid": keys.root.keyid,
                           "sig": base64.b64encode(keys.root.key.sign(root_bytes)).decode()}]
    trust = site_trust(tmp_path, json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
    assert_refused(*run_json("verify", bundle, "--trust", trust), 4, "key id does not match the key")


def test_role_listing_one_key_twice_is_refused(keys: Keys) -> None:
    with pytest.raises(TrustError, match="lists a key twice"):
        Root(version=1, expires="2099-01-01T00:00:00Z", keys={k.keyid: k.key.public for k in (keys.root, keys.release)},
             roles={ROLE_ROOT: Role((keys.root.keyid,), 1),
                    ROLE_RELEASE: Role((keys.release.keyid, keys.release.keyid), 2)})


def test_bundle_signed_twice_by_one_ml_dsa_key_does_not_meet_a_threshold_of_2(
        tmp_path: Path, keys: Keys, bundle: Path) -> None:
    """The ML-DSA signature under its own name and again under the Ed25519 name of the same key id."""
    trust = site_trust(tmp_path, craft_root(version=1, roles={
        ROLE_ROOT: [keys.root], ROLE_RELEASE: [keys.release_pq, keys.release]}, sign_with=[keys.root],
        thresholds={ROLE_RELEASE: 2}))
    for sig in (bundle / "signatures").iterdir():
        sig.unlink()
    manifest = (bundle / "manifest.json").read_bytes()
    sig = keys.release_pq.key.sign(manifest)
    (bundle / "signatures" / f"{keys.release_pq.keyid}.ml-dsa-87.sig").write_bytes(sig)
    (bundle / "signatures" / f"{keys.release_pq.keyid}.ed25519.sig").write_bytes(sig)
    assert_refused(*run_json("verify", bundle, "--trust", trust), 4, "needs 2 valid signatures", "found 1")


def test_root_rotation_signed_twice_by_one_root_key_does_not_meet_a_threshold_of_2(
        tmp_path: Path, keys: Keys, bundle: Path) -> None:
    v1 = craft_root(version=1, roles={ROLE_ROOT: [keys.root, keys.root2], ROLE_RELEASE: [keys.release]},
                    sign_with=[keys.root, keys.root2], thresholds={ROLE_ROOT: 2})
    trust = site_trust(tmp_path, v1)
    v2 = json.loads(craft_root(version=2, roles={ROLE_ROOT: [keys.root, keys.root2], ROLE_RELEASE: [keys.release]},
                               sign_with=[keys.root], thresholds={ROLE_ROOT: 2}))
    v2["signatures"] = v2["signatures"] * 2  # the one signature, listed twice
    (bundle / "roots").mkdir()
    (bundle / "roots" / "2.root.json").write_bytes(json.dumps(v2, sort_keys=True, separators=(",", ":")).encode())
    assert_refused(*run_json("verify", bundle, "--trust", trust), 4, "needs 2 valid signatures", "found 1")
    assert root_version(trust) == 1


def test_authorization_signed_twice_by_one_key_does_not_meet_an_authorize_threshold_of_2(
        tmp_path: Path, keys: Keys, bundle: Path) -> None:
    trust = tmp_path / "trust"
    code, out = trust_init(trust, keys, "--authorize-key", keys.authorize.public,
                           "--authorize-key", keys.authorize_pq.public, "--authorize-threshold", "2")
    assert code == 0, out
    auth = authorization(tmp_path / "auth", keys.authorize_pq, manifest_digest=digest_of(bundle))
    [sig] = (auth / "signatures").iterdir()
    shutil.copy(sig, auth / "signatures" / f"{keys.authorize_pq.keyid}.ed25519.sig")
    assert_refused(*install(bundle, trust, tmp_path, "--authorization", auth), 4, "needs 2 valid signatures",
                   "found 1")
    assert_nothing_installed(tmp_path)


def test_sigstore_file_in_an_authorization_does_not_count_for_the_authorize_role(
        tmp_path: Path, keys: Keys, bundle: Path) -> None:
    """Sigstore signers count for the release role only; in an authorization such a file is
    unsupported and counts for nothing (this held before; kept so every signer kind is tested)."""
    trust = tmp_path / "trust"
    assert trust_init(trust, keys, "--authorize-key", keys.authorize.public)[0] == 0
    auth = authorization(tmp_path / "auth", keys.authorize, manifest_digest=digest_of(bundle))
    for sig in (auth / "signatures").iterdir():
        sig.unlink()
    (auth / "signatures" / "ci.sigstore.json").write_bytes(b"{}")
    assert_refused(*install(bundle, trust, tmp_path, "--authorization", auth), 4, "ci.sigstore.json")
    assert_nothing_installed(tmp_path)


# == the connected side: `gapship authorize --trust` checks an authorization before it is written ===


def test_authorize_with_trust_refuses_a_release_key(tmp_path: Path, keys: Keys, bundle: Path) -> None:
    trust = tmp_path / "authority"
    assert trust_init(trust, keys, "--authorize-key", keys.authorize.public)[0] == 0
    out_dir = tmp_path / "auth"
    code, out = run_json("authorize", "--site", "agency-x", "--manifest-digest", digest_of(bundle), "--expires", "30d",
                         "--key", keys.release.private, "--out", out_dir, "--trust", trust)
    assert_refused(code, out, 2, "not in the authorize role", "would refuse")
    assert not out_dir.exists()


def test_authorize_with_trust_refuses_one_algorithm_where_the_role_requires_hybrid(
        tmp_path: Path, keys: Keys, hybrid_trust: Path, bundle: Path) -> None:
    out_dir = tmp_path / "auth"
    args: list[str | Path] = ["authorize", "--site", "agency-x", "--manifest-digest", digest_of(bundle),
                              "--expires", "30d", "--out", out_dir, "--trust", hybrid_trust]
    assert_refused(*run_json(*args, "--key", keys.authorize.private), 2, "ml-dsa-87")
    assert not out_dir.exists()
    code, out = run_json(*args, "--key", keys.authorize.private, "--key", keys.authorize_pq.private)
    assert code == 0, out
    assert install(bundle, hybrid_trust, tmp_path, "--authorization", out_dir)[0] == 0
