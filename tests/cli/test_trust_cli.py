"""`gapship trust ...`, `keygen --algorithm`, `build --expires/--hash`, and three releases across a key
rotation, all through the CLI."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from gapship_testing import run, run_json, tree


def keygen(tmp_path: Path, name: str, algorithm: str = "ed25519") -> tuple[Path, Path]:
    code, out = run_json("keygen", name, "--out-dir", tmp_path / "keys", "--algorithm", algorithm)
    assert code == 0, out
    return tmp_path / "keys" / f"{name}.key", tmp_path / "keys" / f"{name}.pub"


def test_keygen_ml_dsa_87(tmp_path: Path) -> None:
    private, public = keygen(tmp_path, "pq", "ml-dsa-87")
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and b"BEGIN PUBLIC KEY" in public.read_bytes()
    code, out = run_json("keygen", "pq", "--out-dir", tmp_path / "keys", "--algorithm", "ml-dsa-87")
    assert code == 2 and "refusing to overwrite" in out["error"]["message"]


def test_init_show_json(tmp_path: Path) -> None:
    root_priv, root_pub = keygen(tmp_path, "root")
    _, rel_pub = keygen(tmp_path, "rel")
    _, pq_pub = keygen(tmp_path, "rel-pq", "ml-dsa-87")
    trust = tmp_path / "trust"
    code, out = run_json("trust", "init", "--dir", trust, "--root-key", root_pub, "--release-key", rel_pub,
                         "--release-key", pq_pub, "--require-algorithms", "release=ed25519,ml-dsa-87",
                         "--expires", "30d", "--sign-with", root_priv)
    assert code == 0, out
    assert out["version"] == 1 and len(out["signed_by"]) == 1
    code, shown = run_json("trust", "show", "--dir", trust)
    assert code == 0
    assert shown["mode"] == "root" and shown["version"] == 1 and shown["expired"] is False
    assert shown["roles"]["release"] == {"keyids": shown["roles"]["release"]["keyids"], "threshold": 1,
                                         "require_algorithms": ["ed25519", "ml-dsa-87"]}
    assert sorted((k["name"], k["algorithm"], k["roles"]) for k in shown["keys"]) == [
        ("rel", "ed25519", ["release"]), ("rel-pq", "ml-dsa-87", ["release"]), ("root", "ed25519", ["root"])]
    assert shown["history"] == [1]
    text = run("trust", "show", "--dir", trust).stdout
    assert "trust root v1" in text and "release   1 of 2 keys in each of ed25519 + ml-dsa-87" in text


def test_show_legacy_directory(tmp_path: Path) -> None:
    _, pub = keygen(tmp_path, "rel")
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(pub, trust)
    code, shown = run_json("trust", "show", "--dir", trust)
    assert code == 0 and shown["mode"] == "legacy" and shown["version"] is None
    assert shown["roles"]["release"]["threshold"] == 1


def test_init_refuses_a_signer_that_is_not_a_root_key(tmp_path: Path) -> None:
    _, root_pub = keygen(tmp_path, "root")
    rel_priv, rel_pub = keygen(tmp_path, "rel")
    trust = tmp_path / "trust"
    result = run("trust", "init", "--dir", trust, "--root-key", root_pub, "--release-key", rel_pub,
                 "--sign-with", rel_priv)
    assert result.exit_code == 2 and "is not a root key" in result.stderr
    assert not trust.exists()


def test_init_refuses_an_existing_root(tmp_path: Path) -> None:
    root_priv, root_pub = keygen(tmp_path, "root")
    trust = tmp_path / "trust"
    args = ("trust", "init", "--dir", trust, "--root-key", root_pub, "--release-key", root_pub, "--sign-with", root_priv)
    assert run(*args).exit_code == 0
    before = tree(trust)
    result = run(*args)
    assert result.exit_code == 2 and "already holds a trust root" in result.stderr
    assert tree(trust) == before


def test_add_key_needs_the_old_root_threshold(tmp_path: Path) -> None:
    r1_priv, r1_pub = keygen(tmp_path, "r1")
    r2_priv, r2_pub = keygen(tmp_path, "r2")
    _, rel_pub = keygen(tmp_path, "rel")
    _, new_pub = keygen(tmp_path, "new")
    trust = tmp_path / "trust"
    assert run("trust", "init", "--dir", trust, "--root-key", r1_pub, "--root-key", r2_pub, "--root-threshold", "2",
               "--release-key", rel_pub, "--sign-with", r1_priv, "--sign-with", r2_priv).exit_code == 0
    before = tree(trust)
    result = run("trust", "add-key", "--dir", trust, new_pub, "--sign-with", r1_priv)
    assert result.exit_code == 2
    assert "needs 2 valid signatures from distinct root keys, found 1" in result.stderr
    assert tree(trust) == before
    code, out = run_json("trust", "add-key", "--dir", trust, new_pub, "--threshold", "2",
                         "--sign-with", r1_priv, "--sign-with", r2_priv)
    assert code == 0 and out["version"] == 2


def test_build_expires_and_hash(tmp_path: Path, make_spec) -> None:
    priv, _ = keygen(tmp_path, "rel")
    spec = make_spec()
    code, out = run_json("build", spec, "--out", tmp_path / "b1", "--key", priv, "--expires", "90d",
                         "--hash", "sha384", "--chunk-size", "1KiB")
    assert code == 0, out
    manifest = json.loads((tmp_path / "b1" / "manifest.json").read_bytes())
    created = datetime.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%SZ")
    assert datetime.strptime(manifest["expires"], "%Y-%m-%dT%H:%M:%SZ") - created == timedelta(days=90)
    assert manifest["hash_algorithm"] == "sha384" and out["expires"] == manifest["expires"]
    assert all(len(c["hash"]) == 96 for c in manifest["chunks"])
    code, out = run_json("build", spec, "--out", tmp_path / "b2", "--key", priv, "--expires", "2999-01-01T00:00:00Z")
    assert code == 0 and out["expires"] == "2999-01-01T00:00:00Z"
    result = run("build", spec, "--out", tmp_path / "b3", "--key", priv, "--expires", "soon")
    assert result.exit_code == 2 and "--expires 'soon'" in result.stderr and not (tmp_path / "b3").exists()


def test_hybrid_build_through_cli(tmp_path: Path, make_spec) -> None:
    root_priv, root_pub = keygen(tmp_path, "root")
    ed_priv, ed_pub = keygen(tmp_path, "ed")
    pq_priv, pq_pub = keygen(tmp_path, "pq", "ml-dsa-87")
    trust = tmp_path / "trust"
    assert run("trust", "init", "--dir", trust, "--root-key", root_pub, "--release-key", ed_pub, "--release-key", pq_pub,
               "--require-algorithms", "release=ed25519,ml-dsa-87", "--sign-with", root_priv).exit_code == 0
    spec = make_spec()
    assert run("build", spec, "--out", tmp_path / "half", "--key", ed_priv).exit_code == 0
    result = run("verify", tmp_path / "half", "--trust", trust)
    assert result.exit_code == 4 and "needs 1 valid ml-dsa-87 signatures" in result.stderr
    assert run("sign", tmp_path / "half", "--key", pq_priv).exit_code == 0
    code, out = run_json("verify", tmp_path / "half", "--trust", trust)
    assert code == 0 and len(out["signers"]) == 2
    assert sorted(s["algorithm"] for s in out["signatures"]) == ["ed25519", "ml-dsa-87"]
    code, out = run_json("build", spec, "--out", tmp_path / "both", "--key", ed_priv, "--key", pq_priv)
    assert code == 0 and len(out["signers"]) == 2
    assert run("verify", tmp_path / "both", "--trust", trust).exit_code == 0


def test_trust_update_from_a_folder(tmp_path: Path) -> None:
    root_priv, root_pub = keygen(tmp_path, "root")
    _, rel_pub = keygen(tmp_path, "rel")
    _, rel2_pub = keygen(tmp_path, "rel2")
    auth = tmp_path / "auth"
    assert run("trust", "init", "--dir", auth, "--root-key", root_pub, "--release-key", rel_pub,
               "--sign-with", root_priv).exit_code == 0
    site = tmp_path / "site"
    shutil.copytree(auth, site)
    assert run("trust", "add-key", "--dir", auth, rel2_pub, "--sign-with", root_priv).exit_code == 0
    assert run("trust", "renew", "--dir", auth, "--expires", "700d", "--sign-with", root_priv).exit_code == 0
    code, out = run_json("trust", "update", "--dir", site, auth / "roots")
    assert code == 0 and out["accepted"] == [2, 3] and out["version"] == 3
    assert (site / "root.json").read_bytes() == (auth / "root.json").read_bytes()
    code, out = run_json("trust", "update", "--dir", site, auth / "root.json")
    assert code == 0 and out["accepted"] == []


def test_trust_update_refuses_a_forged_root(tmp_path: Path) -> None:
    root_priv, root_pub = keygen(tmp_path, "root")
    evil_priv, evil_pub = keygen(tmp_path, "evil")
    auth, forged = tmp_path / "auth", tmp_path / "forged"
    for folder, priv, pub in ((auth, root_priv, root_pub), (forged, evil_priv, evil_pub)):
        assert run("trust", "init", "--dir", folder, "--root-key", pub, "--release-key", pub,
                   "--sign-with", priv).exit_code == 0
    assert run("trust", "renew", "--dir", forged, "--sign-with", evil_priv).exit_code == 0
    before = tree(auth)
    result = run("trust", "update", "--dir", auth, forged / "roots" / "2.root.json")
    assert result.exit_code == 4 and "by the root keys of trusted v1" in result.stderr
    assert tree(auth) == before


def test_reset_floor_needs_from_and_to_or_clear(tmp_path: Path) -> None:
    root_priv, root_pub = keygen(tmp_path, "root")
    trust = tmp_path / "trust"
    assert run("trust", "init", "--dir", trust, "--root-key", root_pub, "--release-key", root_pub,
               "--sign-with", root_priv).exit_code == 0
    result = run("trust", "reset-floor", "--dir", trust, "--bundle", "demo", "--from", "9.0", "--sign-with", root_priv)
    assert result.exit_code == 2 and "either --from and --to, or --clear" in result.stderr
    result = run("trust", "reset-floor", "--dir", trust, "--bundle", "demo", "--from", "1.0", "--to", "2.0",
                 "--sign-with", root_priv)
    assert result.exit_code == 2 and "must lower the floor" in result.stderr
    code, out = run_json("trust", "reset-floor", "--dir", trust, "--bundle", "demo", "--from", "9.0", "--to", "1.0",
                         "--sign-with", root_priv)
    assert code == 0 and out["version"] == 2
    code, shown = run_json("trust", "show", "--dir", trust)
    assert shown["floor_resets"] == [{"bundle": "demo", "from": "9.0", "to": "1.0"}]


def test_three_releases_with_a_key_rotation(tmp_path: Path, make_spec) -> None:
    """v1 signed by key A; the authority rotates A out for B (two root versions, carried by v2's bundle);
    v2 and v3 by B. A's v3 and a replay of v1 are refused; the site's trust and floor follow along."""
    root_priv, root_pub = keygen(tmp_path, "root")
    a_priv, a_pub = keygen(tmp_path, "rel-a")
    b_priv, b_pub = keygen(tmp_path, "rel-b")
    auth, site, prefix = tmp_path / "authority", tmp_path / "site-trust", tmp_path / "prefix"
    assert run("trust", "init", "--dir", auth, "--root-key", root_pub, "--release-key", a_pub,
               "--sign-with", root_priv).exit_code == 0
    shutil.copytree(auth, site)  # the one out-of-band bootstrap

    def release(version: str, key: Path, name: str) -> Path:
        out = tmp_path / name
        result = run("build", make_spec(version=version), "--out", out, "--key", key, "--expires", "90d",
                     "--chunk-size", "1KiB")
        assert result.exit_code == 0, result.output
        return out

    b1 = release("1.0.0", a_priv, "b1")
    code, out = run_json("install", b1, "--trust", site, "--prefix", prefix)
    assert code == 0 and out["status"] == "installed" and out["root_version"] == 1

    # Rotation: add B (v2), then revoke A (v3); ship both roots inside the next bundle.
    assert run("trust", "add-key", "--dir", auth, b_pub, "--sign-with", root_priv).exit_code == 0
    assert run("trust", "remove-key", "--dir", auth, "rel-a", "--sign-with", root_priv).exit_code == 0
    b2 = release("2.0.0", b_priv, "b2")
    code, out = run_json("trust", "attach", b2, "--dir", auth)
    assert code == 0 and out["roots"] == ["2.root.json", "3.root.json"]
    code, out = run_json("verify", b2, "--trust", site)
    assert code == 0 and out["root_updates"] == [2, 3]
    assert json.loads(run("trust", "show", "--dir", site, "--json").stdout)["version"] == 1  # verify wrote nothing
    code, out = run_json("install", b2, "--trust", site, "--prefix", prefix)
    assert code == 0, out
    assert out["root_updates"] == [2, 3] and out["root_version"] == 3 and out["previous"] == "1.0.0"
    code, shown = run_json("trust", "show", "--dir", site, "--prefix", prefix)
    assert shown["version"] == 3 and shown["history"] == [1, 2, 3]
    assert [k["name"] for k in shown["keys"] if "release" in k["roles"]] == ["rel-b"]
    assert shown["state"]["bundles"]["demo"]["highest_version"] == "2.0.0"

    # The revoked key A can no longer release, even a newer version; nothing changes under the prefix.
    forged = release("3.0.0", a_priv, "b3-by-a")
    before = tree(prefix)
    result = run("install", forged, "--trust", site, "--prefix", prefix)
    assert result.exit_code == 4 and re.search(r"untrusted \(key not in trust root v3\)", result.stderr)
    assert tree(prefix) == before

    b3 = release("3.0.0", b_priv, "b3")
    code, out = run_json("install", b3, "--trust", site, "--prefix", prefix)
    assert code == 0 and out["previous"] == "2.0.0" and out["root_updates"] == []
    assert (prefix / "demo" / "current").readlink() == Path("3.0.0")

    # Replays: v1 is signed by the revoked key (trust first, exit 4); v2 is older than the floor (exit 5).
    before = tree(prefix)
    assert run("install", b1, "--trust", site, "--prefix", prefix).exit_code == 4
    result = run("install", b2, "--trust", site, "--prefix", prefix)
    assert result.exit_code == 5 and "rollback refused: demo 2.0.0 is older than 3.0.0" in result.stderr
    assert tree(prefix) == before
    assert sorted(p.name for p in (prefix / "demo").iterdir() if not p.name.startswith(".")) == [
        "1.0.0", "2.0.0", "3.0.0", "current"]


def test_trust_directory_is_named_trust_in_every_command_and_the_old_dir_still_works(tmp_path: Path) -> None:
    """One name for one thing: ``--trust TRUSTDIR`` everywhere; ``--dir``, the old spelling of the
    ``trust`` group, is still accepted (scripts keep working) but no longer shown in help."""
    root_priv, root_pub = keygen(tmp_path, "root")
    _, rel_pub = keygen(tmp_path, "rel")
    trust = tmp_path / "trust"
    code, out = run_json("trust", "init", "--trust", trust, "--root-key", root_pub, "--release-key", rel_pub,
                         "--sign-with", root_priv)
    assert code == 0, out
    code, new = run_json("trust", "show", "--trust", trust)
    code_old, old = run_json("trust", "show", "--dir", trust)
    assert code == code_old == 0 and new == old and new["version"] == 1
    for sub in ("show", "update", "init", "add-key", "remove-key", "set-role", "renew", "reset-floor", "attach",
                "add-sigstore"):
        shown = run("trust", sub, "--help").stdout
        assert "--trust PATH" in shown and "--dir" not in shown, sub
    missing = run("trust", "show")
    assert missing.exit_code == 2 and "Missing option '--trust'." in missing.output
