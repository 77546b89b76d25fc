"""``gapship status``: what is installed under a prefix, from the receipts (docs/safeguards.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gapship_testing import run, run_json
from safeguards_testing import (  # noqa: F401
    add_authorize_key, authorization, build_bundle, digest_of, isolated_host, site_file,
)

pytestmark = pytest.mark.usefixtures("isolated_host")


def test_status_lists_versions_active_signers_and_site(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    key = make_key("release")
    trust, prefix, log = make_trust(key), tmp_path / "prefix", tmp_path / "audit.jsonl"
    site = site_file(tmp_path, "demo-site", "inference-audit-log")
    for version in ("1.0.0", "1.10.0", "1.2.0"):
        bundle = build_bundle(tmp_path, key, version=version)
        downgrade = ["--allow-downgrade"] if version == "1.2.0" else []  # 1.2.0 < 1.10.0 (PEP 440)
        code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix, "--audit-log", log,
                             "--site-config", site, *downgrade)
        assert code == 0, out
    code, out = run_json("status", "--prefix", prefix, "--site-config", site)
    assert code == 0, out
    assert out["site"] == "demo-site"
    [demo] = out["bundles"]
    assert demo["name"] == "demo" and demo["active"] == "1.2.0"
    assert [v["version"] for v in demo["versions"]] == ["1.0.0", "1.2.0", "1.10.0"]
    assert [v["active"] for v in demo["versions"]] == [False, True, False]
    active = demo["versions"][1]
    assert active["signers"] == [key.keyid]
    assert active["site"] == "demo-site"
    assert active["models_installed"] == ["tiny"] and active["models_skipped"] == ["big"]
    assert active["manifest_digest"] == digest_of(tmp_path / "bundle-demo-1.2.0")
    text = run("status", "--prefix", prefix).stdout
    assert "demo: active 1.2.0" in text
    assert " * 1.2.0" in text and "left out: big" in text


def test_status_shows_the_authorization_and_its_expiry(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    release, authorizer = make_key("release"), make_key("authorizer")
    trust = make_trust(release)
    add_authorize_key(trust, authorizer)
    bundle = build_bundle(tmp_path, release)
    auth = authorization(tmp_path / "auth", authorizer, name="demo", versions=">=1,<2", expires="7d")
    expires = json.loads((auth / "authorization.json").read_bytes())["expires"]
    prefix = tmp_path / "prefix"
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix, "--audit-log", tmp_path / "a.log",
                         "--site-config", site_file(tmp_path, "agency-x", "inference-audit-log", "content-filter"),
                         "--authorization", auth)
    assert code == 0, out
    code, out = run_json("status", "--prefix", prefix)
    assert code == 0, out
    [version] = out["bundles"][0]["versions"]
    assert version["site"] == "agency-x"
    assert version["expires"] == expires
    [record] = version["authorizations"]
    assert record["expires"] == expires and record["expired"] is False
    assert f"valid until {expires}" in run("status", "--prefix", prefix).stdout


def test_status_of_an_install_without_site(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    key = make_key("release")
    prefix = tmp_path / "prefix"
    assert run_json("install", build_bundle(tmp_path, key), "--trust", make_trust(key), "--prefix", prefix)[0] == 0
    code, out = run_json("status", "--prefix", prefix)
    assert code == 0, out
    [version] = out["bundles"][0]["versions"]
    assert version["site"] is None and version["authorizations"] == [] and version["expires"] is None


def test_status_reports_an_unreadable_receipt(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    key = make_key("release")
    prefix = tmp_path / "prefix"
    assert run_json("install", build_bundle(tmp_path, key), "--trust", make_trust(key), "--prefix", prefix)[0] == 0
    receipt = prefix / "demo" / "1.0.0" / "receipt.json"
    receipt.write_text("{not json")
    code, out = run_json("status", "--prefix", prefix)
    assert code == 0, out
    assert out["bundles"][0]["versions"][0]["problem"].startswith("receipt.json unreadable")


def test_status_of_an_empty_or_missing_prefix(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out = run_json("status", "--prefix", tmp_path / "empty")
    assert code == 0 and out["bundles"] == []
    assert "nothing installed" in run("status", "--prefix", tmp_path / "empty").stdout
    code, out = run_json("status", "--prefix", tmp_path / "missing")
    assert code == 2
    assert "does not exist" in out["error"]["message"]


def _bundle_expiring(tmp_path: Path, key, expires: str) -> Path:  # type: ignore[no-untyped-def]
    """The safeguards test bundle (agency-x is sensitive), rebuilt with an expiry of its own."""
    from gapship.bundler.build import build
    from gapship.bundler.spec import load_spec

    build_bundle(tmp_path, key)  # writes the sources under tmp_path/src-demo-1.0.0
    out = tmp_path / "bundle-expiring"
    build(load_spec(tmp_path / "src-demo-1.0.0" / "spec.toml"), out=out, key=key.key, chunk_size=1024, expires=expires)
    return out


def test_status_names_the_bundle_expiry_and_the_authorization_expiry_apart(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    """`expires` used to be the only expiry shown, and it is the authorization's: a bundle that expires
    in 3 days under an authorization valid for 30 looked good for 30. Both are shown, named apart."""
    release, authorizer = make_key("release"), make_key("authorizer")
    trust = make_trust(release)
    add_authorize_key(trust, authorizer)
    bundle = _bundle_expiring(tmp_path, release, "3d")
    bundle_expires = json.loads((bundle / "manifest.json").read_bytes())["expires"]
    auth = authorization(tmp_path / "auth", authorizer, manifest_digest=digest_of(bundle), expires="30d")
    auth_expires = json.loads((auth / "authorization.json").read_bytes())["expires"]
    assert bundle_expires != auth_expires
    prefix = tmp_path / "prefix"
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix, "--audit-log", tmp_path / "a.log",
                         "--site-config", site_file(tmp_path, "agency-x", "inference-audit-log", "content-filter"),
                         "--authorization", auth)
    assert code == 0, out
    code, out = run_json("status", "--prefix", prefix)
    assert code == 0, out
    [version] = out["bundles"][0]["versions"]
    assert version["bundle_expires"] == bundle_expires and version["bundle_expired"] is False
    assert version["authorization_expires"] == auth_expires
    assert version["expires"] == auth_expires  # unchanged meaning: the earliest authorization expiry
    assert "bundle_expires_problem" not in version
    text = run("status", "--prefix", prefix).stdout
    assert f"bundle valid until {bundle_expires}" in text
    assert f"authorization {version['authorizations'][0]['id'][:23]} valid until {auth_expires}" in text


def test_status_shows_a_bundle_expiry_without_a_site(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    key = make_key("release")
    bundle = _bundle_expiring(tmp_path, key, "2d")
    prefix = tmp_path / "prefix"
    assert run_json("install", bundle, "--trust", make_trust(key), "--prefix", prefix)[0] == 0
    [version] = run_json("status", "--prefix", prefix)[1]["bundles"][0]["versions"]  # type: ignore[index]
    assert version["bundle_expires"] == json.loads((bundle / "manifest.json").read_bytes())["expires"]
    assert version["authorization_expires"] is None and version["expires"] is None


def test_status_of_a_bundle_that_does_not_expire(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    key = make_key("release")
    prefix = tmp_path / "prefix"
    assert run_json("install", build_bundle(tmp_path, key), "--trust", make_trust(key), "--prefix", prefix)[0] == 0
    [version] = run_json("status", "--prefix", prefix)[1]["bundles"][0]["versions"]  # type: ignore[index]
    assert version["bundle_expires"] is None and version["bundle_expired"] is None
    assert "bundle valid until" not in run("status", "--prefix", prefix).stdout


def test_status_reads_the_bundle_expiry_of_an_older_receipt_from_the_kept_manifest(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    """A receipt written before gapship recorded `bundle_expires`: the manifest copy beside it says."""
    key = make_key("release")
    bundle = _bundle_expiring(tmp_path, key, "5d")
    prefix = tmp_path / "prefix"
    assert run_json("install", bundle, "--trust", make_trust(key), "--prefix", prefix)[0] == 0
    receipt = prefix / "demo" / "1.0.0" / "receipt.json"
    old = json.loads(receipt.read_bytes())
    del old["bundle_expires"]
    receipt.write_text(json.dumps(old))
    [version] = run_json("status", "--prefix", prefix)[1]["bundles"][0]["versions"]  # type: ignore[index]
    assert version["bundle_expires"] == json.loads((bundle / "manifest.json").read_bytes())["expires"]
    (prefix / "demo" / "1.0.0" / "manifest.json").chmod(0o644)
    (prefix / "demo" / "1.0.0" / "manifest.json").unlink()
    [version] = run_json("status", "--prefix", prefix)[1]["bundles"][0]["versions"]  # type: ignore[index]
    assert version["bundle_expires"] is None
    assert version["bundle_expires_problem"].startswith("manifest.json unreadable")
    assert "bundle expiry unknown (manifest.json unreadable" in run("status", "--prefix", prefix).stdout
