"""The one trust decision (installer/trust.py; docs/trust.md): the trust root, its document, rotation,
revocation and expiry; anti-rollback, fast-forward recovery, expiry and a clock set back; k-of-n release
signatures, each key counted once, hybrid Ed25519 + ML-DSA-87, and the legacy *.pub mode.

Prior art: python-tuf tests/test_updater_key_rotations.py and test_trusted_metadata_set.py;
test_updater_top_level_update.py (test_new_*_version_rollback, test_*_fast_forward_recovery,
test_expired_*), the TUF spec's freeze attack; RAUC min-bundle-version.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.roots import add_key, floor_reset, remove_key, renew, sign_root
from gapship.installer.crypto.keys import ML_DSA_87, PublicKey, parse_signature_file_name, signature_file_name
from gapship.installer.errors import HostError, PolicyError, TrustError, UsageError
from gapship.installer.formats.root import Envelope, FloorReset, Role, Root
from gapship.installer.host.state import HostState
from gapship.installer.deploy.install import install
from gapship.installer.trust import Allowances, TrustStore, load_root_file, update_root
from gapship_testing import KeyPair, run, tree
from trust_testing import (
    DAY, T0, attach, build_bundle, copy_trust, init_root, new_root, sign_extra, verify, verify_and_install,
)


# -- the trust root: its document, rotation, revocation and expiry ---------------------------------


def test_root_file_is_canonical_and_reloads(tmp_path: Path, make_key) -> None:
    root_key, rel = make_key("root"), make_key("rel")
    signed = init_root(tmp_path / "auth", root=[root_key], release=[rel])
    data = (tmp_path / "auth" / "root.json").read_bytes()
    assert data == (tmp_path / "auth" / "roots" / "1.root.json").read_bytes()
    assert json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode() == data
    store = TrustStore.from_dir(tmp_path / "auth")
    assert store.root.version == 1 and store.root == signed.root
    assert store.root.role("release").keyids == (rel.keyid,)
    assert store.names[rel.keyid] == "rel"


def test_rejects_noncanonical_root(tmp_path: Path, make_key) -> None:
    init_root(tmp_path / "auth", root=[make_key("root")], release=[make_key("rel")])
    path = tmp_path / "auth" / "root.json"
    path.write_text(json.dumps(json.loads(path.read_bytes()), indent=1))
    with pytest.raises(TrustError, match="not in canonical form"):
        TrustStore.from_dir(tmp_path / "auth")


def test_rejects_tampered_root(tmp_path: Path, make_key) -> None:
    root_key, rel, evil = make_key("root"), make_key("rel"), make_key("evil")
    init_root(tmp_path / "auth", root=[root_key], release=[rel])
    path = tmp_path / "auth" / "root.json"
    doc = json.loads(path.read_bytes())
    doc["signed"]["keys"][evil.keyid] = evil.key.public.to_entry()
    doc["signed"]["roles"]["release"]["keyids"].append(evil.keyid)
    path.write_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(TrustError, match="by its own root keys"):
        TrustStore.from_dir(tmp_path / "auth")


def test_rejects_root_keyid_that_does_not_match_its_key(tmp_path: Path, make_key) -> None:
    root_key, rel, other = make_key("root"), make_key("rel"), make_key("other")
    signed = init_root(tmp_path / "auth", root=[root_key], release=[rel])
    doc = signed.root.to_dict()
    doc["keys"][rel.keyid] = other.key.public.to_entry()  # the same id, another key: could be counted twice
    with pytest.raises(TrustError, match="key id does not match"):
        Root.from_dict(doc, where="root.json")


def test_rejects_root_whose_threshold_cannot_be_met(tmp_path: Path, make_key) -> None:
    signed = init_root(tmp_path / "auth", root=[make_key("root")], release=[make_key("rel")])
    doc = signed.root.to_dict()
    doc["roles"]["release"]["threshold"] = 2
    with pytest.raises(TrustError, match="threshold 2 but only 1 keys"):
        Root.from_dict(doc, where="root.json")


def test_root_rotation_needs_old_and_new_threshold(tmp_path: Path, make_key) -> None:
    old, new, rel = make_key("old-root"), make_key("new-root"), make_key("rel")
    v1 = init_root(tmp_path / "auth", root=[old], release=[rel]).root
    # v2 hands the root role from `old` to `new`.
    v2 = Root(version=2, expires=v1.expires, keys={new.keyid: new.key.public, rel.keyid: rel.key.public},
              roles={"root": Role(keyids=(new.keyid,), threshold=1),
                     "release": v1.roles["release"]})
    only_old = sign_root(v2, [old.key]).to_bytes()
    only_new = sign_root(v2, [new.key]).to_bytes()
    both = sign_root(v2, [old.key, new.key]).to_bytes()
    with pytest.raises(TrustError, match=r"by its own root keys"):
        update_root(v1, only_old, where="roots/2.root.json")
    with pytest.raises(TrustError, match=r"by the root keys of trusted v1"):
        update_root(v1, only_new, where="roots/2.root.json")
    assert update_root(v1, both, where="roots/2.root.json").root.version == 2


def test_root_rotation_counts_old_threshold_of_distinct_keys(tmp_path: Path, make_key) -> None:
    r1, r2, r3, rel = make_key("r1"), make_key("r2"), make_key("r3"), make_key("rel")
    init_root(tmp_path / "auth", root=[r1, r2, r3], release=[rel], root_threshold=2, sign_with=[r1, r2])
    v1 = TrustStore.from_dir(tmp_path / "auth").root
    v2 = Root(version=2, expires=v1.expires, keys=v1.keys, roles=v1.roles, names=v1.names)
    with pytest.raises(TrustError, match="needs 2 valid signatures from distinct root keys, found 1"):
        update_root(v1, sign_root(v2, [r3.key]).to_bytes(), where="roots/2.root.json")
    assert update_root(v1, sign_root(v2, [r1.key, r3.key]).to_bytes(), where="roots/2.root.json").version == 2


def test_rejects_root_version_skip(tmp_path: Path, make_key, make_spec) -> None:
    root_key, rel = make_key("root"), make_key("rel")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[rel])
    site = copy_trust(auth, tmp_path / "site")
    new_root(auth, renew(), sign_with=[root_key])
    v3 = new_root(auth, renew(), sign_with=[root_key])
    # v3, properly signed, offered as the next root after v1 (named 2.root.json) ...
    with pytest.raises(TrustError, match=r"is root version 3, but the next after v1 must be v2"):
        update_root(TrustStore.from_dir(site).root, v3.to_bytes(), where="roots/2.root.json")
    # ... or as roots/3.root.json with roots/2.root.json left out.
    bundle = build_bundle(make_spec, tmp_path / "b", [rel])
    attach(bundle, auth, 3)
    before = tree(site)
    with pytest.raises(TrustError, match=r"root version skip: roots/3.root.json follows trusted v1"):
        verify_and_install(bundle, site, tmp_path / "prefix")
    assert tree(site) == before and not (tmp_path / "prefix").exists()


def test_rejects_root_rollback(tmp_path: Path, make_key, make_spec) -> None:
    """An old root (that still trusted a revoked key) in a bundle is skipped: it cannot bring the key back."""
    root_key, stolen, rel = make_key("root"), make_key("stolen"), make_key("rel")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[stolen, rel])
    new_root(auth, renew(), sign_with=[root_key])  # v2 still trusts `stolen`
    new_root(auth, remove_key(stolen.keyid, role=None, threshold=None), sign_with=[root_key])  # v3 revokes it
    site = tmp_path / "site"
    copy_trust(auth, site)
    bundle = build_bundle(make_spec, tmp_path / "b", [stolen])
    attach(bundle, auth, 2)
    with pytest.raises(TrustError, match="key not in trust root v3"):
        verify(bundle, site)
    assert TrustStore.from_dir(site).root.version == 3


def test_rejects_revoked_key(tmp_path: Path, make_key, make_spec) -> None:
    root_key, stolen, rel = make_key("root"), make_key("stolen"), make_key("rel")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[stolen, rel])
    site = copy_trust(auth, tmp_path / "site")
    new_root(auth, remove_key(stolen.keyid, role=None, threshold=None), sign_with=[root_key])
    bundle = build_bundle(make_spec, tmp_path / "b", [stolen])
    attach(bundle, auth, 2)  # the bundle carries the very root that revokes its signer
    prefix = tmp_path / "prefix"
    with pytest.raises(TrustError, match=r"stolen|key not in trust root v2"):
        verify_and_install(bundle, site, prefix)
    assert not prefix.exists()
    # The revocation was verified and persisted even though the bundle was refused (as python-tuf does).
    assert TrustStore.from_dir(site).root.version == 2
    assert stolen.keyid not in TrustStore.from_dir(site).root.keys


def test_revoked_key_stops_counting_toward_threshold(tmp_path: Path, make_key, make_spec) -> None:
    root_key, a, b, c = make_key("root"), make_key("a"), make_key("b"), make_key("c")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[a, b, c], threshold=2)
    site = copy_trust(auth, tmp_path / "site")
    assert verify(build_bundle(make_spec, tmp_path / "b1", [a, b]), site).signers == tuple(sorted([a.keyid, b.keyid]))
    new_root(auth, remove_key(a.keyid, role="release", threshold=None), sign_with=[root_key])
    bundle = build_bundle(make_spec, tmp_path / "b2", [a, b])
    attach(bundle, auth, 2)
    with pytest.raises(TrustError, match="needs 2 valid signatures from distinct release keys, found 1"):
        verify(bundle, site)


def test_rejects_expired_root(tmp_path: Path, make_key, make_spec) -> None:
    root_key, rel = make_key("root"), make_key("rel")
    init_root(tmp_path / "site", root=[root_key], release=[rel], expires=T0 + 10 * DAY)
    bundle = build_bundle(make_spec, tmp_path / "b", [rel])
    assert verify(bundle, tmp_path / "site", now=T0 + 9 * DAY).manifest.version == "1.0.0"
    with pytest.raises(PolicyError, match=r"trust root v1 expired at 2026-03-11T12:00:00Z") as e:
        verify(bundle, tmp_path / "site", now=T0 + 10 * DAY)
    assert e.value.exit_code == 5


def test_newer_root_in_bundle_replaces_an_expired_one(tmp_path: Path, make_key, make_spec) -> None:
    root_key, rel = make_key("root"), make_key("rel")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[rel], expires=T0 + 10 * DAY)
    site = copy_trust(auth, tmp_path / "site")
    new_root(auth, renew(), sign_with=[root_key], expires=T0 + 400 * DAY)
    bundle = build_bundle(make_spec, tmp_path / "b", [rel])
    attach(bundle, auth, 2)
    verified = verify(bundle, site, now=T0 + 20 * DAY, persist=True)
    assert verified.root_updates == (2,) and verified.root_version == 2
    assert TrustStore.from_dir(site).root.expires == "2027-04-05T12:00:00Z"


def test_verify_without_persist_leaves_trust_dir_alone(tmp_path: Path, make_key, make_spec) -> None:
    root_key, rel, rel2 = make_key("root"), make_key("rel"), make_key("rel2")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[rel])
    site = copy_trust(auth, tmp_path / "site")
    new_root(auth, add_key(rel2.key.public, role="release", name="rel2", threshold=None), sign_with=[root_key])
    bundle = build_bundle(make_spec, tmp_path / "b", [rel2])
    attach(bundle, auth, 2)
    before = tree(site)
    assert verify(bundle, site).signers == (rel2.keyid,)
    assert tree(site) == before


def test_rejects_unknown_file_in_roots_dir(tmp_path: Path, make_key, make_spec) -> None:
    root_key, rel = make_key("root"), make_key("rel")
    init_root(tmp_path / "site", root=[root_key], release=[rel])
    bundle = build_bundle(make_spec, tmp_path / "b", [rel])
    (bundle / "roots").mkdir()
    (bundle / "roots" / "latest.json").write_bytes(b"{}")
    with pytest.raises(TrustError, match=r"roots/latest.json is not a <version>.root.json file"):
        verify(bundle, tmp_path / "site")


def test_trust_dir_catches_up_from_history(tmp_path: Path, make_key) -> None:
    """A crash between writing roots/2.root.json and root.json: the next load is at v2 anyway."""
    root_key, rel = make_key("root"), make_key("rel")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[rel])
    v1 = (auth / "root.json").read_bytes()
    new_root(auth, renew(), sign_with=[root_key])
    (auth / "root.json").write_bytes(v1)
    assert TrustStore.from_dir(auth).root.version == 2


def test_load_root_file_refuses_root_without_enough_own_signatures(tmp_path: Path, make_key) -> None:
    r1, r2, rel = make_key("r1"), make_key("r2"), make_key("rel")
    signed = init_root(tmp_path / "auth", root=[r1, r2], release=[rel], root_threshold=2, sign_with=[r1, r2])
    env = Envelope.from_bytes(signed.to_bytes(), where="root.json")
    one = Envelope(signed=env.signed, signed_bytes=env.signed_bytes, signatures=env.signatures[:1])
    with pytest.raises(TrustError, match="needs 2 valid signatures"):
        load_root_file(one.to_bytes(), where="root.json")


# -- anti-rollback, fast-forward recovery, expiry and a clock set back -----------------------------


@pytest.fixture
def site(tmp_path: Path, make_key):
    """An authority with one root and one release key, and a site's copy of it."""
    root_key, rel = make_key("root"), make_key("rel")
    init_root(tmp_path / "auth", root=[root_key], release=[rel])
    return copy_trust(tmp_path / "auth", tmp_path / "site"), root_key, rel


def floor(prefix: Path, name: str = "demo") -> str | None:
    return HostState.for_prefix(prefix).load().floor(name)


def test_rejects_rollback(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    v1 = build_bundle(make_spec, tmp_path / "v1", [rel], version="1.0.0")
    v2 = build_bundle(make_spec, tmp_path / "v2", [rel], version="2.0.0", created=T0 + DAY)
    verify_and_install(v1, trust, prefix, now=T0 + 2 * DAY)
    verify_and_install(v2, trust, prefix, now=T0 + 2 * DAY)
    before = tree(prefix)
    with pytest.raises(PolicyError, match=r"rollback refused: demo 1.0.0 is older than 2.0.0") as e:
        verify_and_install(v1, trust, prefix, now=T0 + 2 * DAY)
    assert e.value.exit_code == 5
    assert tree(prefix) == before and (prefix / "demo" / "current").readlink() == Path("2.0.0")


def test_rejects_rollback_through_cli(tmp_path: Path, make_key, make_trust, make_bundle) -> None:
    rel = make_key("rel")
    trust = make_trust(rel)  # the floor does not depend on the trust mode
    prefix = tmp_path / "prefix"
    old, new = make_bundle(rel, version="1.0.0"), make_bundle(rel, version="1.1.0")
    assert run("install", new, "--trust", trust, "--prefix", prefix).exit_code == 0
    before = tree(prefix)
    result = run("install", old, "--trust", trust, "--prefix", prefix)
    assert result.exit_code == 5
    assert "rollback refused: demo 1.0.0 is older than 1.1.0" in result.stderr
    assert tree(prefix) == before


def test_rejects_rollback_that_raced_the_check(tmp_path: Path, site, make_spec) -> None:
    """v1 verified against the state before v2 was installed by another process: the install
    checks the floor again under its lock and refuses."""
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    v1 = build_bundle(make_spec, tmp_path / "v1", [rel], version="1.0.0")
    v2 = build_bundle(make_spec, tmp_path / "v2", [rel], version="2.0.0")
    early = verify(v1, trust, prefix=prefix)
    verify_and_install(v2, trust, prefix)
    before = tree(prefix)
    with pytest.raises(PolicyError, match="rollback refused"):
        install(v1, early, prefix=prefix, state=HostState.for_prefix(prefix))
    assert tree(prefix) == before


def test_rejects_equal_version_without_flag(tmp_path: Path, make_key, make_trust, make_bundle) -> None:
    rel = make_key("rel")
    trust, prefix = make_trust(rel), tmp_path / "prefix"
    bundle = make_bundle(rel)
    assert run("install", bundle, "--trust", trust, "--prefix", prefix).exit_code == 0
    before = tree(prefix)
    result = run("install", bundle, "--trust", trust, "--prefix", prefix)
    assert result.exit_code == 5
    assert "demo 1.0.0 is already the highest version installed here" in result.stderr
    assert "--allow-reinstall" in result.stderr
    assert tree(prefix) == before


def test_allow_reinstall_is_logged(tmp_path: Path, make_key, make_trust, make_bundle) -> None:
    rel = make_key("rel")
    trust, prefix = make_trust(rel), tmp_path / "prefix"
    bundle = make_bundle(rel)
    assert run("install", bundle, "--trust", trust, "--prefix", prefix).exit_code == 0
    result = run("install", bundle, "--trust", trust, "--prefix", prefix, "--allow-reinstall", "--json")
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert out["overrides"] == ["reinstall"] and out["status"] == "already-installed"
    events = HostState.for_prefix(prefix).load().events
    assert [(e["version"], e["overrides"]) for e in events] == [("1.0.0", ["reinstall"])]


def test_allow_downgrade_is_logged_and_keeps_the_floor(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    v2 = build_bundle(make_spec, tmp_path / "v2", [rel], version="2.0.0")
    v1 = build_bundle(make_spec, tmp_path / "v1", [rel], version="1.0.0")
    verify_and_install(v2, trust, prefix)
    result = verify_and_install(v1, trust, prefix, allow=Allowances(downgrade=True))
    assert result.status == "installed" and result.overrides == ("downgrade",)
    receipt = json.loads((prefix / "demo" / "1.0.0" / "receipt.json").read_bytes())
    assert receipt["overrides"] == ["downgrade"]
    assert (prefix / "demo" / "current").readlink() == Path("1.0.0")
    assert floor(prefix) == "2.0.0"  # only a root-signed reset lowers the floor
    assert HostState.for_prefix(prefix).load().events[-1]["overrides"] == ["downgrade"]
    with pytest.raises(PolicyError, match="--allow-reinstall"):
        verify_and_install(v2, trust, prefix)


def test_interrupted_install_finishes_on_plain_rerun(tmp_path: Path, site, make_spec) -> None:
    """Killed after the version directory was renamed into place but before `current` switched and the
    floor was raised: a plain rerun completes it (the floor is raised last)."""
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    v1 = build_bundle(make_spec, tmp_path / "v1", [rel], version="1.0.0")
    v2 = build_bundle(make_spec, tmp_path / "v2", [rel], version="2.0.0")
    verify_and_install(v1, trust, prefix)
    install(v2, verify(v2, trust), prefix=prefix)  # no state: as if killed before the floor was raised
    os.replace(prefix / "demo" / "current", prefix / "demo" / "current.bak")
    os.symlink("1.0.0", prefix / "demo" / "current")  # ... and before current was switched
    os.unlink(prefix / "demo" / "current.bak")
    assert floor(prefix) == "1.0.0"
    result = verify_and_install(v2, trust, prefix)
    assert result.status == "already-installed" and result.overrides == ()
    assert (prefix / "demo" / "current").readlink() == Path("2.0.0") and floor(prefix) == "2.0.0"


def test_rejects_fast_forward(tmp_path: Path, make_key, make_spec) -> None:
    """A stolen release key signs 999.0.0: once installed, its floor locks out real releases, and
    nothing but a root-signed reset can lower it. A reset signed by the release key is refused."""
    root_key, stolen, rel = make_key("root"), make_key("stolen"), make_key("rel")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[stolen, rel])
    trust = copy_trust(auth, tmp_path / "site")
    prefix = tmp_path / "prefix"
    verify_and_install(build_bundle(make_spec, tmp_path / "ff", [stolen], version="999.0.0"), trust, prefix)
    real = build_bundle(make_spec, tmp_path / "real", [rel], version="2.0.0")
    with pytest.raises(PolicyError, match="rollback refused: demo 2.0.0 is older than 999.0.0"):
        verify_and_install(real, trust, prefix)
    # The thief writes the reset into a root of his own making: it is not signed by the root key.
    forged_auth = copy_trust(auth, tmp_path / "forged")
    with pytest.raises(UsageError, match="not a root key"):
        new_root(forged_auth, floor_reset("demo", from_version="999.0.0", to_version="0"), sign_with=[stolen])
    v1 = TrustStore.from_dir(auth).root
    forged = Root(version=2, expires=v1.expires, keys=v1.keys, roles=v1.roles, names=v1.names,
                  floor_resets=(FloorReset("demo", "999.0.0", "0"),))
    bundle = build_bundle(make_spec, tmp_path / "real2", [rel], version="2.0.0")
    (bundle / "roots").mkdir()
    (bundle / "roots" / "2.root.json").write_bytes(sign_root(forged, [stolen.key]).to_bytes())
    with pytest.raises(TrustError, match="by the root keys of trusted v1"):
        verify_and_install(bundle, trust, prefix)
    assert floor(prefix) == "999.0.0"


def test_fast_forward_recovery_with_root_signed_reset(tmp_path: Path, make_key, make_spec) -> None:
    root_key, stolen, rel = make_key("root"), make_key("stolen"), make_key("rel")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[stolen, rel])
    trust = copy_trust(auth, tmp_path / "site")
    prefix = tmp_path / "prefix"
    verify_and_install(build_bundle(make_spec, tmp_path / "ff", [stolen], version="999.0.0"), trust, prefix)
    # The authority revokes the stolen key and resets the floor, in the roots the next bundle carries.
    new_root(auth, remove_key(stolen.keyid, role=None, threshold=None), sign_with=[root_key])
    new_root(auth, floor_reset("demo", from_version="999.0.0", to_version="1.0.0"), sign_with=[root_key])
    real = build_bundle(make_spec, tmp_path / "real", [rel], version="2.0.0")
    attach(real, auth, 2, 3)
    result = verify_and_install(real, trust, prefix)
    assert result.status == "installed" and floor(prefix) == "2.0.0"
    assert HostState.for_prefix(prefix).load().events[-1]["floor_reset_from"] == "999.0.0"
    # The reset is one-shot: it matched the floor 999.0.0 only; 1.5.0 is a rollback now.
    older = build_bundle(make_spec, tmp_path / "older", [rel], version="1.5.0")
    with pytest.raises(PolicyError, match="older than 2.0.0"):
        verify_and_install(older, trust, prefix)


def test_rejects_expired(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    bundle = build_bundle(make_spec, tmp_path / "b", [rel], expires="30d")
    assert verify(bundle, trust, now=T0 + 29 * DAY).manifest.expires == "2026-03-31T12:00:00Z"
    prefix = tmp_path / "prefix"
    with pytest.raises(PolicyError, match=r"demo 1.0.0 expired at 2026-03-31T12:00:00Z") as e:
        verify_and_install(bundle, trust, prefix, now=T0 + 30 * DAY)
    assert e.value.exit_code == 5 and not prefix.exists()


def test_rejects_expired_through_cli(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    bundle = build_bundle(make_spec, tmp_path / "b", [rel], expires="2026-03-02T00:00:00Z")
    prefix = tmp_path / "prefix"
    for args in (("verify", bundle, "--trust", trust), ("install", bundle, "--trust", trust, "--prefix", prefix)):
        result = run(*args)
        assert result.exit_code == 5, result.output
        assert "demo 1.0.0 expired at 2026-03-02T00:00:00Z" in result.stderr
    assert not prefix.exists()


def test_rejects_clock_set_back(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    signed_later = build_bundle(make_spec, tmp_path / "v1", [rel], version="1.0.0", created=T0 + 10 * DAY)
    verify_and_install(signed_later, trust, prefix, now=T0 + 11 * DAY)
    assert HostState.for_prefix(prefix).load().newest_accepted == "2026-03-11T12:00:00Z"
    # Older signing time, newer version, expired by the true clock: a freeze attack needs the clock set back.
    stale = build_bundle(make_spec, tmp_path / "v2", [rel], version="2.0.0", created=T0, expires="5d")
    before = tree(prefix)
    with pytest.raises(PolicyError, match=r"host clock 2026-03-03T12:00:00Z is earlier than 2026-03-11T12:00:00Z"):
        verify_and_install(stale, trust, prefix, now=T0 + 2 * DAY)
    assert tree(prefix) == before


def test_rejects_bundle_signed_after_the_host_clock(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    bundle = build_bundle(make_spec, tmp_path / "b", [rel], created=T0 + 3 * DAY)
    with pytest.raises(PolicyError, match=r"was signed at 2026-03-04T12:00:00Z, later than the host clock"):
        verify(bundle, trust, now=T0 + 2 * DAY)
    assert verify(bundle, trust, now=T0 + 3 * DAY - timedelta(minutes=4)).manifest.version == "1.0.0"  # within skew


def test_rejects_unreadable_state(tmp_path: Path, site, make_spec) -> None:
    """Losing the state would drop every floor: refuse instead of starting from nothing."""
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    verify_and_install(build_bundle(make_spec, tmp_path / "v1", [rel]), trust, prefix)
    state = prefix / ".gapship" / "state.json"
    state.write_bytes(state.read_bytes()[:-20])
    with pytest.raises(HostError, match="is unreadable") as e:
        verify_and_install(build_bundle(make_spec, tmp_path / "v0", [rel], version="0.9.0"), trust, prefix)
    assert e.value.exit_code == 7


def test_state_file_keeps_floors_of_other_bundles(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    verify_and_install(build_bundle(make_spec, tmp_path / "a", [rel], name="alpha", version="3.0.0"), trust, prefix)
    verify_and_install(build_bundle(make_spec, tmp_path / "b", [rel], name="beta", version="1.0.0"), trust, prefix)
    state = HostState.for_prefix(prefix).load()
    assert (state.floor("alpha"), state.floor("beta")) == ("3.0.0", "1.0.0")
    assert sorted(p.name for p in (prefix / ".gapship").iterdir()) == ["state.json", "state.lock"]


# -- k-of-n signatures, each key counted once; ML-DSA-87 and hybrid; the legacy *.pub mode ---------


@pytest.fixture
def make_pq_key(tmp_path: Path):
    def make(name: str) -> KeyPair:
        private, public, _ = keygen(name, tmp_path / "keys", ML_DSA_87)
        return KeyPair(name, private, public, SigningKey.load(private))

    return make


def test_rejects_below_threshold(tmp_path: Path, make_key, make_spec) -> None:
    root_key, a, b, c = make_key("root"), make_key("a"), make_key("b"), make_key("c")
    site = tmp_path / "site"
    init_root(site, root=[root_key], release=[a, b, c], threshold=2)
    bundle = build_bundle(make_spec, tmp_path / "b", [a])
    prefix = tmp_path / "prefix"
    result = run("install", bundle, "--trust", site, "--prefix", prefix)
    assert result.exit_code == 4
    assert "needs 2 valid signatures from distinct release keys, found 1" in result.stderr
    assert not prefix.exists()


def test_accepts_threshold_of_distinct_keys(tmp_path: Path, make_key, make_spec) -> None:
    root_key, a, b, c = make_key("root"), make_key("a"), make_key("b"), make_key("c")
    site = tmp_path / "site"
    init_root(site, root=[root_key], release=[a, b, c], threshold=2)
    bundle = build_bundle(make_spec, tmp_path / "b", [a, c])
    assert verify(bundle, site).signers == tuple(sorted([a.keyid, c.keyid]))


def test_counts_duplicate_key_once(tmp_path: Path, make_key) -> None:
    """One root key's signature listed twice must not meet a threshold of two."""
    r1, r2, rel = make_key("r1"), make_key("r2"), make_key("rel")
    signed = init_root(tmp_path / "auth", root=[r1, r2], release=[rel], root_threshold=2, sign_with=[r1, r2])
    env = signed.envelope
    mine = next(s for s in env.signatures if s.keyid == r1.keyid)
    doubled = Envelope(signed=env.signed, signed_bytes=env.signed_bytes, signatures=(mine, mine))
    with pytest.raises(TrustError, match=r"needs 2 valid signatures from distinct root keys, found 1") as e:
        load_root_file(doubled.to_bytes(), where="root.json")
    assert "duplicate" in e.value.message


def test_counts_key_once_across_signature_files(tmp_path: Path, make_key, make_spec) -> None:
    """A second file claiming the same key (another algorithm suffix) adds nothing."""
    root_key, a, b = make_key("root"), make_key("a"), make_key("b")
    site = tmp_path / "site"
    init_root(site, root=[root_key], release=[a, b], threshold=2)
    bundle = build_bundle(make_spec, tmp_path / "b", [a])
    sig = (bundle / "signatures" / signature_file_name(a.keyid)).read_bytes()
    (bundle / "signatures" / signature_file_name(a.keyid, ML_DSA_87)).write_bytes(sig)
    with pytest.raises(TrustError, match="found 1"):
        verify(bundle, site)


def test_rejects_signature_by_key_of_another_role(tmp_path: Path, make_key, make_spec) -> None:
    """A root key is trusted, but not to sign releases."""
    root_key, rel = make_key("root"), make_key("rel")
    site = tmp_path / "site"
    init_root(site, root=[root_key], release=[rel])
    bundle = build_bundle(make_spec, tmp_path / "b", [root_key])
    with pytest.raises(TrustError, match="key is not in the release role"):
        verify(bundle, site)


def test_rejects_signature_with_another_algorithm_than_its_key(tmp_path: Path, make_key, make_pq_key, make_spec) -> None:
    root_key, pq = make_key("root"), make_pq_key("pq")
    site = tmp_path / "site"
    init_root(site, root=[root_key], release=[pq])
    bundle = build_bundle(make_spec, tmp_path / "b", [pq])
    sigdir = bundle / "signatures"
    (sigdir / signature_file_name(pq.keyid, ML_DSA_87)).rename(sigdir / signature_file_name(pq.keyid, "ed25519"))
    with pytest.raises(TrustError, match="signature says ed25519, the key is ml-dsa-87"):
        verify(bundle, site)


def test_ml_dsa_87_key_signs_and_verifies(tmp_path: Path, make_key, make_pq_key, make_spec) -> None:
    root_key, pq = make_key("root"), make_pq_key("pq")
    assert pq.key.public.algorithm == ML_DSA_87 and len(pq.key.public.raw) == 2592
    assert PublicKey.from_pem(pq.public.read_bytes(), source="pq.pub") == pq.key.public
    site = tmp_path / "site"
    init_root(site, root=[root_key], release=[pq])
    bundle = build_bundle(make_spec, tmp_path / "b", [pq], algorithm="sha384")
    names = [p.name for p in (bundle / "signatures").iterdir()]
    assert names == [f"{pq.keyid}.ml-dsa-87.sig"] and parse_signature_file_name(names[0]) == (pq.keyid, ML_DSA_87)
    verified = verify(bundle, site)
    assert verified.signers == (pq.keyid,) and verified.digest.startswith("sha384:")


def test_rejects_bit_flip_in_ml_dsa_87_signature(tmp_path: Path, make_key, make_pq_key, make_spec) -> None:
    root_key, pq = make_key("root"), make_pq_key("pq")
    site = tmp_path / "site"
    init_root(site, root=[root_key], release=[pq])
    bundle = build_bundle(make_spec, tmp_path / "b", [pq])
    path = bundle / "signatures" / signature_file_name(pq.keyid, ML_DSA_87)
    sig = bytearray(path.read_bytes())
    sig[100] ^= 1
    path.write_bytes(bytes(sig))
    with pytest.raises(TrustError, match="does not verify"):
        verify(bundle, site)


def test_hybrid_requires_both(tmp_path: Path, make_key, make_pq_key, make_spec) -> None:
    root_key, ed, pq = make_key("root"), make_key("ed"), make_pq_key("pq")
    site = tmp_path / "site"
    init_root(site, root=[root_key], release=[ed, pq], require={"release": ("ed25519", "ml-dsa-87")})
    prefix = tmp_path / "prefix"
    for signer, missing in ((ed, "ml-dsa-87"), (pq, "ed25519")):
        bundle = build_bundle(make_spec, tmp_path / f"only-{signer.name}", [signer])
        result = run("install", bundle, "--trust", site, "--prefix", prefix)
        assert result.exit_code == 4, result.output
        assert f"needs 1 valid {missing} signatures" in result.stderr
        assert not prefix.exists()
    both = build_bundle(make_spec, tmp_path / "both", [ed])
    sign_extra(both, pq.key)  # the second half of the pair, added later with `gapship sign`
    assert verify(both, site).signers == tuple(sorted([ed.keyid, pq.keyid]))


def test_hybrid_refuses_a_broken_half(tmp_path: Path, make_key, make_pq_key, make_spec) -> None:
    root_key, ed, pq = make_key("root"), make_key("ed"), make_pq_key("pq")
    site = tmp_path / "site"
    init_root(site, root=[root_key], release=[ed, pq], require={"release": ("ed25519", "ml-dsa-87")})
    bundle = build_bundle(make_spec, tmp_path / "b", [ed, pq])
    (bundle / "signatures" / signature_file_name(pq.keyid, ML_DSA_87)).write_bytes(bytes(4627))
    with pytest.raises(TrustError, match="needs 1 valid ml-dsa-87 signatures"):
        verify(bundle, site)


def test_hybrid_root_rotation_needs_both_algorithms(tmp_path: Path, make_key, make_pq_key) -> None:
    ed_root, pq_root, rel = make_key("ed-root"), make_pq_key("pq-root"), make_key("rel")
    auth = tmp_path / "auth"
    init_root(auth, root=[ed_root, pq_root], release=[rel], require={"root": ("ed25519", "ml-dsa-87")})
    store = TrustStore.from_dir(auth)
    v2 = Root(version=2, expires=store.root.expires, keys=store.root.keys, roles=store.root.roles)
    with pytest.raises(TrustError, match="ml-dsa-87"):
        update_root(store.root, sign_root(v2, [ed_root.key]).to_bytes(), where="roots/2.root.json")
    assert update_root(store.root, sign_root(v2, [ed_root.key, pq_root.key]).to_bytes(), where="r").version == 2


def test_legacy_pub_directory_still_works(tmp_path: Path, make_key, make_trust, make_bundle) -> None:
    a, b = make_key("a"), make_key("b")
    trust = make_trust(a, b)
    store = TrustStore.from_dir(trust)
    assert store.legacy and store.threshold == 1 and set(store.keys) == {a.keyid, b.keyid}
    bundle = make_bundle(b)
    verified = verify(bundle, trust, now=None)
    assert verified.signers == (b.keyid,) and verified.root_version is None


def test_legacy_directory_ignores_a_roots_chain(tmp_path: Path, make_key, make_trust, make_spec) -> None:
    """A legacy site has no root keys to check a chain with: it neither adopts it nor fails on it."""
    root_key, rel, other = make_key("root"), make_key("rel"), make_key("other")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[rel])
    new_root(auth, lambda r: r, sign_with=[root_key])
    legacy = make_trust(rel)
    bundle = build_bundle(make_spec, tmp_path / "b", [rel])
    attach(bundle, auth, 2)
    before = tree(legacy)
    assert verify(bundle, legacy, persist=True).root_updates == ()
    assert tree(legacy) == before
    unsigned_by_legacy_key = build_bundle(make_spec, tmp_path / "b2", [other])
    with pytest.raises(TrustError, match="key not in the trust store"):
        verify(unsigned_by_legacy_key, legacy)


def test_root_json_takes_precedence_over_pub_files(tmp_path: Path, make_key, make_spec) -> None:
    root_key, rel, stray = make_key("root"), make_key("rel"), make_key("stray")
    site = tmp_path / "site"
    init_root(site, root=[root_key], release=[rel])
    (site / "stray.pub").write_bytes(stray.public.read_bytes())
    with pytest.raises(TrustError, match="key not in trust root v1"):
        verify(build_bundle(make_spec, tmp_path / "b", [stray]), site)
