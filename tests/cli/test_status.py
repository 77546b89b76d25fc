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
