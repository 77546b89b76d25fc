"""Sigstore signatures verified offline against a pinned trusted root and identity (docs/sigstore.md).

Real sigstore bundles from the shared assets (tests/support/sigstore_assets.py). A fresh sigstore
signature over a gapship manifest cannot be made offline, so the trust wiring is covered by checking
an asset bundle through the trust code with manifest bytes equal to the asset's artifact.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gapship.installer.crypto.sigstore import (
    UNAVAILABLE,
    SigstoreSigner,
    certificate_identity,
    check_sigstore_file,
    load_sigstore_signers,
    pin_sigstore_signer,
    verify_sigstore_signature,
)
from gapship.installer.bundle.files import RawBundle
from gapship.installer.errors import (
    SigstoreSignatureError,
    SigstoreUnavailableError,
    TrustError,
    UnsafeContentError,
    UsageError,
)
from gapship.installer.crypto.keys import signature_file_name
from gapship.installer.trust import TrustStore, check_signatures, verify_manifest
from sigstore_assets import (
    CVE_2022_36056,
    GITHUB_OAUTH,
    GOOD,
    INVALID_VERSION,
    NO_LOG_ENTRY,
    PRODUCTION,
    STAGING,
    STAGING_REKOR_V2,
    Case,
    block_sigstore,
    flip_bit,
    require_assets,
)

pytest.importorskip("sigstore", reason="the gapship[sigstore] extra is not installed")


@pytest.fixture(autouse=True)
def _assets() -> None:
    require_assets()


def verify(case: Case, *, data: bytes | None = None, bundle: bytes | None = None, root: Path | None = None,
           identity: str | None = None, issuer: str | None = None) -> None:
    verify_sigstore_signature(
        case.artifact_bytes if data is None else data,
        case.bundle_bytes if bundle is None else bundle,
        trusted_root=root or case.trusted_root,
        identity=identity or case.identity,
        issuer=issuer or case.issuer,
    )


def refusal(**kwargs: object) -> SigstoreSignatureError:
    with pytest.raises(SigstoreSignatureError) as info:
        verify(**kwargs)
    return info.value


# --- the pure verification function -------------------------------------------------------------

@pytest.mark.parametrize("case", GOOD, ids=["production-github", "staging", "staging-rekor-v2"])
def test_verifies_real_bundle_with_pinned_identity(case: Case) -> None:
    verify(case)


def test_verification_never_consults_sigstore_tuf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verifier.production(offline=True) would trust an unverified cached root: prove no TUF path runs."""
    from sigstore.models import ClientTrustConfig
    from sigstore.verify import Verifier

    def forbidden(*_a: object, **_k: object) -> None:
        raise AssertionError("TUF-backed trust config used")

    for owner, attr in ((Verifier, "production"), (Verifier, "staging"), (ClientTrustConfig, "production"),
                        (ClientTrustConfig, "staging"), (ClientTrustConfig, "from_tuf")):
        monkeypatch.setattr(owner, attr, forbidden)
    verify(PRODUCTION)


def test_rejects_wrong_identity() -> None:
    e = refusal(case=PRODUCTION, identity="https://github.com/evil/x/.github/workflows/release.yml@refs/tags/v0.1.2")
    assert e.reason == "identity"
    assert "wrong identity" in e.message and "evil/x" in e.message
    assert isinstance(e, TrustError) and e.exit_code == 4


def test_rejects_wrong_issuer() -> None:
    e = refusal(case=PRODUCTION, issuer=GITHUB_OAUTH)
    assert e.reason == "issuer"
    assert "wrong OIDC issuer" in e.message and GITHUB_OAUTH in e.message


@pytest.mark.parametrize("case", GOOD, ids=["production-github", "staging", "staging-rekor-v2"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_rejects_flipped_bit_in_artifact(case: Case, where: str) -> None:
    data = case.artifact_bytes
    index = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    e = refusal(case=case, data=flip_bit(data, index))
    assert e.reason == "signature"
    assert "bad signature" in e.message


def test_rejects_signature_over_another_artifact() -> None:
    e = refusal(case=STAGING, data=STAGING_REKOR_V2.artifact_bytes)
    assert e.reason == "signature"


def test_rejects_staging_bundle_against_production_root() -> None:
    e = refusal(case=STAGING, root=PRODUCTION.trusted_root)
    assert e.reason == "chain"
    assert "not from the pinned trusted root" in e.message


def test_rejects_production_bundle_against_staging_root() -> None:
    e = refusal(case=PRODUCTION, root=STAGING.trusted_root)
    assert e.reason == "chain"


def test_rejects_log_entry_inconsistent_with_signature_cve_2022_36056() -> None:
    e = refusal(case=CVE_2022_36056)
    assert e.reason == "signature"
    assert "transparency log entry is inconsistent" in e.message


@pytest.mark.parametrize("case", [NO_LOG_ENTRY, INVALID_VERSION], ids=["no-log-entry", "invalid-version"])
def test_rejects_malformed_bundle(case: Case) -> None:
    e = refusal(case=case)
    assert e.reason == "malformed"
    assert "malformed sigstore bundle" in e.message
    assert "\n" not in e.message


@pytest.mark.parametrize("junk", [b"", b"\xff\xfe not json", b"{}", b"[1, 2]", b'{"mediaType": 7}'],
                         ids=["empty", "binary", "empty-object", "array", "wrong-type"])
def test_rejects_garbage_bundle(junk: bytes) -> None:
    assert refusal(case=PRODUCTION, bundle=junk).reason == "malformed"


def test_rejects_bundle_with_flipped_bit_in_signature() -> None:
    doc = json.loads(PRODUCTION.bundle_bytes)
    sig = doc["messageSignature"]["signature"]
    doc["messageSignature"]["signature"] = ("B" if sig[10] != "B" else "C").join([sig[:10], sig[11:]])
    e = refusal(case=PRODUCTION, bundle=json.dumps(doc).encode())
    assert e.reason == "signature"
    assert "Signature is invalid" in e.message


@pytest.mark.parametrize("case", GOOD, ids=["production-github", "staging", "staging-rekor-v2"])
def test_certificate_identity_reads_what_a_site_pins(case: Case) -> None:
    """What `gapship sign --sigstore` tells the signer to pin is exactly what the verifier matches."""
    from sigstore.models import Bundle

    assert certificate_identity(Bundle.from_json(case.bundle_bytes).signing_certificate) == (case.identity, case.issuer)


def test_refuses_pin_with_empty_issuer() -> None:
    """sigstore's Identity policy skips the issuer check when the issuer is empty: never let that happen."""
    with pytest.raises(UsageError, match="issuer must be a non-empty string"):
        verify_sigstore_signature(PRODUCTION.artifact_bytes, PRODUCTION.bundle_bytes,
                                  trusted_root=PRODUCTION.trusted_root, identity=PRODUCTION.identity, issuer="")


def test_refuses_invalid_trusted_root(tmp_path: Path) -> None:
    bad = tmp_path / "trusted_root.json"
    bad.write_text('{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}')
    with pytest.raises(UsageError, match="trusted root"):
        verify(PRODUCTION, root=bad)


def test_missing_extra_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    block_sigstore(monkeypatch)
    with pytest.raises(SigstoreUnavailableError) as info:
        verify(PRODUCTION)
    assert info.value.message == UNAVAILABLE == "sigstore signature could not be checked: install gapship[sigstore]"


OFFLINE_SCRIPT = r"""
import json, socket, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import sigstore_assets as a
from gapship.installer.crypto.sigstore import verify_sigstore_signature
from gapship.installer.errors import SigstoreSignatureError
try:
    socket.create_connection(("1.1.1.1", 443), timeout=2).close()
    online = True
except OSError:
    online = False
def run(case, data=None, root=None, identity=None, issuer=None):
    try:
        verify_sigstore_signature(case.artifact_bytes if data is None else data, case.bundle_bytes,
                                  trusted_root=root or case.trusted_root, identity=identity or case.identity,
                                  issuer=issuer or case.issuer)
        return "ok"
    except SigstoreSignatureError as e:
        return e.reason
results = {
    "good": [run(c) for c in a.GOOD],
    "flipped": [run(c, data=a.flip_bit(c.artifact_bytes)) for c in a.GOOD],
    "identity": run(a.PRODUCTION, identity="https://github.com/evil/x"),
    "issuer": run(a.PRODUCTION, issuer=a.GITHUB_OAUTH),
    "staging_on_production": run(a.STAGING, root=a.PRODUCTION.trusted_root),
    "malformed": [run(c) for c in (a.CVE_2022_36056, a.NO_LOG_ENTRY, a.INVALID_VERSION)],
}
print(json.dumps({"online": online, "results": results}))
"""


def test_verifies_and_refuses_with_the_network_cut(tmp_path: Path) -> None:
    """The whole matrix again, in a process whose network namespace has no interface but loopback."""
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot cut the network here (unshare -rn: {probe.stderr.decode().strip()})")
    support = Path(__file__).resolve().parents[2] / "support"
    proc = subprocess.run(["unshare", "-rn", sys.executable, "-c", OFFLINE_SCRIPT, str(support)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["online"] is False
    assert out["results"] == {
        "good": ["ok", "ok", "ok"],
        "flipped": ["signature", "signature", "signature"],
        "identity": "identity",
        "issuer": "issuer",
        "staging_on_production": "chain",
        "malformed": ["signature", "malformed", "malformed"],
    }


# --- pins in a trust directory --------------------------------------------------------------------

def pin(trust: Path, case: Case, name: str | None = None, **overrides: str) -> SigstoreSigner:
    return pin_sigstore_signer(trust, trusted_root=case.trusted_root, identity=overrides.get("identity", case.identity),
                               issuer=overrides.get("issuer", case.issuer), name=name)


def test_pin_round_trips(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    signer = pin(trust, PRODUCTION, name="rfc8785-release")
    assert load_sigstore_signers(trust) == (signer,)
    assert signer.trusted_root.read_bytes() == PRODUCTION.trusted_root.read_bytes()
    assert signer.trusted_root.parent == trust / "sigstore"
    assert (signer.identity, signer.issuer, signer.signer_id) == (PRODUCTION.identity, PRODUCTION.issuer,
                                                                 "sigstore:rfc8785-release")


def test_pin_escapes_toml_special_characters(tmp_path: Path) -> None:
    identity = 'odd "quoted" \\ identity = é'
    signer = pin(tmp_path / "trust", STAGING, name="odd", identity=identity)
    assert load_sigstore_signers(tmp_path / "trust")[0].identity == identity == signer.identity


def test_rejects_second_pin_for_same_identity(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    pin(trust, STAGING, name="first")
    before = sorted(p.name for p in (trust / "sigstore").iterdir())
    with pytest.raises(UsageError, match="already pinned as 'first'"):
        pin(trust, STAGING, name="second")
    assert sorted(p.name for p in (trust / "sigstore").iterdir()) == before


def test_rejects_hand_written_duplicate_identity_pins(tmp_path: Path) -> None:
    """Two pins for one identity would count one signature twice toward the threshold."""
    trust = tmp_path / "trust"
    pin(trust, STAGING, name="first")
    folder = trust / "sigstore"
    (folder / "second.toml").write_text((folder / "first.toml").read_text())
    with pytest.raises(UsageError, match="name the same identity"):
        load_sigstore_signers(trust)


@pytest.mark.parametrize("root", ["../outside.json", "/etc/passwd", "", ".hidden"])
def test_rejects_pin_whose_trusted_root_leaves_its_folder(tmp_path: Path, root: str) -> None:
    folder = tmp_path / "trust" / "sigstore"
    folder.mkdir(parents=True)
    (folder / "x.toml").write_text(f'identity = "a"\nissuer = "b"\ntrusted_root = "{root}"\n')
    with pytest.raises(UsageError, match="trusted_root must be a file name"):
        load_sigstore_signers(tmp_path / "trust")


@pytest.mark.parametrize("text, problem", [
    ('identity = "a"\nissuer = "b"\ntrusted_root = "r.json"\nisuer = "c"\n', "unknown"),
    ('identity = "a"\ntrusted_root = "r.json"\n', "missing"),
    ('identity = "a"\nissuer = ""\ntrusted_root = "r.json"\n', "non-empty"),
    ('identity = "a"\nissuer = 3\ntrusted_root = "r.json"\n', "non-empty"),
    ("identity = \n", "not a valid TOML pin"),
])
def test_rejects_malformed_pin(tmp_path: Path, text: str, problem: str) -> None:
    folder = tmp_path / "trust" / "sigstore"
    folder.mkdir(parents=True)
    (folder / "r.json").write_bytes(STAGING.trusted_root.read_bytes())
    (folder / "x.toml").write_text(text)
    with pytest.raises(UsageError, match=problem):
        load_sigstore_signers(tmp_path / "trust")


# --- through the trust code (installer/trust.py hook) ------------------------------------------

def raw_bundle(tmp_path: Path, case: Case, files: dict[str, bytes]) -> RawBundle:
    return RawBundle(root=tmp_path, manifest_bytes=case.artifact_bytes, signatures=files)


def test_sigstore_signature_counts_toward_threshold(tmp_path: Path) -> None:
    """The asset's artifact stands in for manifest bytes: the signature stage passes, and only the
    manifest parser (which comes after it) refuses the wheel."""
    trust = tmp_path / "trust"
    signer = pin(trust, PRODUCTION, name="release-ci")
    store = TrustStore.from_dir(trust)
    raw = raw_bundle(tmp_path, PRODUCTION, {"release.sigstore.json": PRODUCTION.bundle_bytes})
    (check,) = check_signatures(raw.manifest_bytes, raw.signatures, store)
    assert (check.status, check.keyid) == ("valid", "sigstore:release-ci")
    assert store.names[signer.signer_id] == f"{PRODUCTION.identity} (issuer {PRODUCTION.issuer})"
    with pytest.raises(UnsafeContentError):
        verify_manifest(raw, trust=store)


def test_rejects_sigstore_signature_from_unpinned_identity(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    pin(trust, PRODUCTION, name="someone-else", identity="https://github.com/evil/x/.github/workflows/r.yml@refs/heads/main")
    store = TrustStore.from_dir(trust)
    raw = raw_bundle(tmp_path, PRODUCTION, {"release.sigstore.json": PRODUCTION.bundle_bytes})
    (check,) = check_signatures(raw.manifest_bytes, raw.signatures, store)
    assert (check.status, check.keyid) == ("untrusted", None)
    assert "wrong identity" in check.detail
    with pytest.raises(TrustError, match="release.sigstore.json: untrusted"):
        verify_manifest(raw, trust=store)


def test_rejects_sigstore_signature_over_other_manifest_bytes(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    pin(trust, PRODUCTION, name="release-ci")
    store = TrustStore.from_dir(trust)
    raw = RawBundle(root=tmp_path, manifest_bytes=flip_bit(PRODUCTION.artifact_bytes),
                    signatures={"release.sigstore.json": PRODUCTION.bundle_bytes})
    (check,) = check_signatures(raw.manifest_bytes, raw.signatures, store)
    assert check.status == "invalid" and "bad signature" in check.detail
    with pytest.raises(TrustError, match="release.sigstore.json: invalid"):
        verify_manifest(raw, trust=store)


def test_file_name_does_not_choose_the_signer(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    pin(trust, STAGING, name="aaa-staging")
    pin(trust, PRODUCTION, name="zzz-release")
    store = TrustStore.from_dir(trust)
    (check,) = check_signatures(PRODUCTION.artifact_bytes, {"aaa-staging.sigstore.json": PRODUCTION.bundle_bytes}, store)
    assert (check.status, check.keyid) == ("valid", "sigstore:zzz-release")


def test_counts_duplicate_sigstore_signature_once(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    pin(trust, PRODUCTION, name="release-ci")
    store = with_release_threshold(TrustStore.from_dir(trust), 2)
    raw = raw_bundle(tmp_path, PRODUCTION, {"a.sigstore.json": PRODUCTION.bundle_bytes,
                                            "b.sigstore.json": PRODUCTION.bundle_bytes})
    assert [c.status for c in check_signatures(raw.manifest_bytes, raw.signatures, store)] == ["valid", "valid"]
    with pytest.raises(TrustError, match="needs 2 valid signatures from distinct release keys, found 1"):
        verify_manifest(raw, trust=store)


def with_release_threshold(store: TrustStore, threshold: int) -> TrustStore:
    """The same store, its release role needing ``threshold`` distinct signers."""
    role = dataclasses.replace(store.root.roles["release"], threshold=threshold)
    return dataclasses.replace(store, root=dataclasses.replace(store.root, roles={**store.root.roles, "release": role}))


def test_sigstore_and_ed25519_together_meet_threshold_of_two(tmp_path: Path, make_key) -> None:
    key = make_key("release")
    trust = tmp_path / "trust"
    pin(trust, PRODUCTION, name="release-ci")
    (trust / key.public.name).write_bytes(key.public.read_bytes())
    store = with_release_threshold(TrustStore.from_dir(trust), 2)
    raw = raw_bundle(tmp_path, PRODUCTION, {"ci.sigstore.json": PRODUCTION.bundle_bytes,
                                            signature_file_name(key.keyid): key.key.sign(PRODUCTION.artifact_bytes)})
    checks = check_signatures(raw.manifest_bytes, raw.signatures, store)
    assert sorted(c.keyid or "" for c in checks if c.status == "valid") == sorted([key.keyid, "sigstore:release-ci"])
    with pytest.raises(UnsafeContentError):  # past the signature threshold: only the manifest parser refuses
        verify_manifest(raw, trust=store)


def test_sigstore_signature_untrusted_without_pins(tmp_path: Path, make_key) -> None:
    key = make_key("release")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / key.public.name).write_bytes(key.public.read_bytes())
    (check,) = check_signatures(PRODUCTION.artifact_bytes, {"x.sigstore.json": PRODUCTION.bundle_bytes},
                                TrustStore.from_dir(trust))
    assert (check.status, check.detail) == ("untrusted", "no sigstore signer is pinned in the trust store")


def test_missing_extra_signature_not_checked_and_not_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trust = tmp_path / "trust"
    pin(trust, PRODUCTION, name="release-ci")
    store = TrustStore.from_dir(trust)
    block_sigstore(monkeypatch)
    assert TrustStore.from_dir(trust) == store  # reading pins needs no sigstore
    raw = raw_bundle(tmp_path, PRODUCTION, {"release.sigstore.json": PRODUCTION.bundle_bytes})
    (check,) = check_signatures(raw.manifest_bytes, raw.signatures, store)
    assert (check.status, check.keyid, check.detail) == ("unchecked", None, UNAVAILABLE)
    with pytest.raises(TrustError) as info:
        verify_manifest(raw, trust=store)
    assert "release.sigstore.json: unchecked (sigstore signature could not be checked: install gapship[sigstore])" \
        in info.value.message


def test_check_sigstore_file_reports_malformed_once(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    pin(trust, PRODUCTION, name="a")
    pin(trust, STAGING, name="b")
    out = check_sigstore_file("x.sigstore.json", NO_LOG_ENTRY.bundle_bytes, NO_LOG_ENTRY.artifact_bytes,
                              load_sigstore_signers(trust))
    assert out.status == "invalid" and "malformed sigstore bundle" in out.detail
