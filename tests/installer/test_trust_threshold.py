"""k-of-n release signatures, each key counted once; hybrid Ed25519 + ML-DSA-87; the legacy *.pub mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.roots import sign_root
from gapship.installer.formats.root import Envelope, Root
from gapship.installer.errors import TrustError
from gapship.installer.crypto.keys import ML_DSA_87, PublicKey, parse_signature_file_name, signature_file_name
from gapship.installer.trust import TrustStore, load_root_file, update_root
from gapship_testing import KeyPair, run, tree
from trust_testing import attach, build_bundle, init_root, new_root, sign_extra, verify


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

