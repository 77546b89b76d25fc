"""The trust root: its document, rotation, revocation and expiry (docs/trust.md).

Prior art: python-tuf tests/test_updater_key_rotations.py and test_trusted_metadata_set.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gapship.bundler.roots import add_key, remove_key, renew, sign_root
from gapship.installer.formats.root import Envelope, Role, Root
from gapship.installer.errors import PolicyError, TrustError
from gapship.installer.trust import TrustStore, load_root_file, update_root
from gapship_testing import tree
from trust_testing import DAY, T0, attach, build_bundle, copy_trust, init_root, new_root, verify, verify_and_install


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
