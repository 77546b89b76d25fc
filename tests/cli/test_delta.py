"""Delta bundles through the CLI (docs/format.md, 11.1): `build --base`, installing a delta on its
installed base, versions that share files, and every way a delta or its base can be wrong."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from gapship_testing import POLICY, KeyPair, assert_error, gapship_script, noise, run_json, tree, write_spec

WEIGHTS = noise(300_000, seed=7)
CONFIG = b'{"hidden": 4}\n'
V1 = {"weights.bin": WEIGHTS, "config.json": CONFIG}


class Site:
    """A release engineer's key and a site's trust directory and prefix, in tmp_path."""

    def __init__(self, root: Path, key: KeyPair, trust: Path) -> None:
        self.root, self.key, self.trust = root, key, trust
        self.prefix = root / "prefix"
        self.home = self.prefix / "demo"
        self.count = 0

    def spec(self, files: dict[str, bytes], version: str, *, policy: bytes = POLICY,
             models: dict[str, dict[str, bytes]] | None = None) -> Path:
        self.count += 1
        spec = write_spec(self.root / f"spec{self.count}", files, version=version, policy=policy)
        for name, extra in (models or {}).items():
            for rel, data in extra.items():
                (spec.parent / name / rel).parent.mkdir(parents=True, exist_ok=True)
                (spec.parent / name / rel).write_bytes(data)
            with spec.open("a") as f:
                f.write(f'\n[[model]]\nname = "{name}"\nsource = "{name}"\n')
        return spec

    def build(self, spec: Path, out: str, *extra: str | Path) -> tuple[int, dict[str, object]]:
        return run_json("build", spec, "--out", self.root / out, "--key", self.key.private, "--chunk-size", "4KiB",
                        *extra)

    def install(self, bundle: str) -> tuple[int, dict[str, object]]:
        return run_json("install", self.root / bundle, "--trust", self.trust, "--prefix", self.prefix)


@pytest.fixture
def site(tmp_path: Path, make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path]) -> Site:
    key = make_key("release")
    return Site(tmp_path, key, make_trust(key))


def _v1(site: Site, *, install: bool = True) -> None:
    code, out = site.build(site.spec(V1, "1.0.0"), "b1")
    assert code == 0, out
    if install:
        code, out = site.install("b1")
        assert code == 0, out


def _chunk_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in (bundle / "chunks").iterdir())


def test_policy_only_update_carries_only_the_policy(site: Site) -> None:
    _v1(site)
    code, out = site.build(site.spec(V1, "2.0.0", policy=POLICY + b"# tightened\n"), "b2", "--base", site.root / "b1")
    assert code == 0, out
    assert out["from_base"] == {"files": 2, "bytes": len(WEIGHTS) + len(CONFIG)}
    assert out["base"]["version"] == "1.0.0"  # type: ignore[index]
    assert _chunk_bytes(site.root / "b2") <= 10 * 1024  # the policy in one tar record, not the 300 kB of weights
    code, out = site.install("b2")
    assert code == 0, out
    assert out["base"]["version"] == "1.0.0"  # type: ignore[index]
    assert sum(out["shared"].values()) == 2  # type: ignore[union-attr]
    v2 = site.home / "2.0.0"
    assert (v2 / "models/tiny/weights.bin").read_bytes() == WEIGHTS
    assert (v2 / "safeguards/policy.toml").read_bytes() == POLICY + b"# tightened\n"
    receipt = json.loads((v2 / "receipt.json").read_bytes())
    assert receipt["base"]["manifest_digest"] == json.loads((site.home / "1.0.0/receipt.json").read_bytes())[
        "manifest_digest"]
    assert os.readlink(site.home / "current") == "2.0.0"
    # A complete version like any other: installing the same delta again adopts it after every check.
    code, out = run_json("install", site.root / "b2", "--trust", site.trust, "--prefix", site.prefix,
                         "--allow-reinstall")
    assert code == 0 and out["status"] == "already-installed", out


def test_build_with_base_is_reproducible(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    _v1(site, install=False)
    spec = site.spec({**V1, "extra.txt": b"new\n"}, "2.0.0")
    for out in ("d1", "d2"):
        code, result = site.build(spec, out, "--base", site.root / "b1")
        assert code == 0, result
    assert tree(site.root / "d1") == tree(site.root / "d2")


def test_base_of_only_manifest_and_signatures_is_enough(site: Site) -> None:
    _v1(site)
    kept = site.root / "kept"
    kept.mkdir()
    shutil.copy(site.root / "b1/manifest.json", kept)
    shutil.copytree(site.root / "b1/signatures", kept / "signatures")
    code, out = site.build(site.spec(V1, "2.0.0"), "b2", "--base", kept)
    assert code == 0 and out["from_base"]["files"] == 2, out  # type: ignore[index]


def test_rename_only_update_costs_nothing(site: Site) -> None:
    _v1(site)
    code, out = site.build(site.spec({"renamed/w.bin": WEIGHTS, "cfg.json": CONFIG, "copy.bin": WEIGHTS}, "2.0.0"),
                           "b2", "--base", site.root / "b1")
    assert code == 0 and out["from_base"]["files"] == 3, out  # type: ignore[index]
    code, out = site.install("b2")
    assert code == 0, out
    v2 = site.home / "2.0.0/models/tiny"
    assert (v2 / "renamed/w.bin").read_bytes() == (v2 / "copy.bin").read_bytes() == WEIGHTS
    assert not (v2 / "weights.bin").exists()


def test_new_model_beside_an_unchanged_one(site: Site) -> None:
    _v1(site)
    other = {"w.bin": noise(20_000, seed=9)}
    policy = POLICY + b'\n[models.other]\nsites = ["test-site"]\n'
    code, out = site.build(site.spec(V1, "2.0.0", policy=policy, models={"other": other}), "b2",
                           "--base", site.root / "b1")
    assert code == 0 and out["from_base"]["files"] == 2, out  # type: ignore[index]
    assert _chunk_bytes(site.root / "b2") > 20_000  # the new model crosses
    code, out = site.install("b2")
    assert code == 0, out
    assert (site.home / "2.0.0/models/other/w.bin").read_bytes() == other["w.bin"]
    assert (site.home / "2.0.0/models/tiny/weights.bin").read_bytes() == WEIGHTS


def test_model_removed(site: Site) -> None:
    policy = POLICY + b'\n[models.other]\nsites = ["test-site"]\n'
    code, out = site.build(site.spec(V1, "1.0.0", policy=policy, models={"other": {"w.bin": b"x" * 5000}}), "b1")
    assert code == 0, out
    assert site.install("b1")[0] == 0
    code, out = site.build(site.spec(V1, "2.0.0"), "b2", "--base", site.root / "b1")
    assert code == 0, out
    code, out = site.install("b2")
    assert code == 0, out
    assert not (site.home / "2.0.0/models/other").exists()
    assert (site.home / "1.0.0/models/other/w.bin").exists()


def test_delta_of_a_delta(site: Site) -> None:
    _v1(site)
    assert site.build(site.spec({**V1, "b.txt": b"two\n"}, "2.0.0"), "b2", "--base", site.root / "b1")[0] == 0
    assert site.install("b2")[0] == 0
    code, out = site.build(site.spec({**V1, "b.txt": b"two\n", "c.txt": b"three\n"}, "3.0.0"), "b3",
                           "--base", site.root / "b2")
    assert code == 0 and out["from_base"]["files"] == 3, out  # type: ignore[index]
    code, out = site.install("b3")
    assert code == 0, out
    v3 = site.home / "3.0.0/models/tiny"
    assert (v3 / "weights.bin").read_bytes() == WEIGHTS and (v3 / "b.txt").read_bytes() == b"two\n"


def test_rejects_delta_without_its_base_installed(site: Site) -> None:
    _v1(site, install=False)
    assert site.build(site.spec(V1, "2.0.0"), "b2", "--base", site.root / "b1")[0] == 0
    code, out = site.install("b2")
    message = assert_error(out, code=5, kind="policy", subject=out["error"]["subject"])  # type: ignore[index]
    assert code == 5 and "delta of demo 1.0.0" in message and "not installed" in message
    assert not (site.home / "2.0.0").exists()


def test_rejects_delta_of_another_base(site: Site) -> None:
    _v1(site)
    # Another 1.0.0 (other bytes, same version): the delta names its digest, not the installed one's.
    other = site.root / "other"
    write_spec(other, {"weights.bin": WEIGHTS, "config.json": b"{}\n"})
    assert run_json("build", other / "spec.toml", "--out", site.root / "b1x", "--key", site.key.private)[0] == 0
    assert site.build(site.spec(V1, "2.0.0"), "b2", "--base", site.root / "b1x")[0] == 0
    before = tree(site.prefix)
    code, out = site.install("b2")
    assert code == 5 and "not installed" in out["error"]["message"], out  # type: ignore[index]
    assert tree(site.prefix) == before


def test_rejects_reused_file_altered_in_the_installed_base(site: Site) -> None:
    _v1(site)
    assert site.build(site.spec(V1, "2.0.0"), "b2", "--base", site.root / "b1")[0] == 0
    weights = site.home / "1.0.0/models/tiny/weights.bin"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 1
    os.chmod(weights, 0o644)
    weights.write_bytes(bytes(data))
    code, out = site.install("b2")
    assert code == 3, out
    message = assert_error(out, code=3, kind="integrity", subject=out["error"]["subject"])  # type: ignore[index]
    assert "weights.bin" in message and "sha256" in message
    assert not (site.home / "2.0.0").exists() and os.readlink(site.home / "current") == "1.0.0"
    assert not [p for p in site.home.iterdir() if p.name.startswith(".staging-")]


def test_rejects_delta_whose_base_was_pruned(site: Site) -> None:
    _v1(site)
    assert site.build(site.spec({**V1, "n.txt": b"n\n"}, "2.0.0"), "b2")[0] == 0
    assert site.install("b2")[0] == 0
    assert site.build(site.spec({**V1, "m.txt": b"m\n"}, "3.0.0"), "b3", "--base", site.root / "b1")[0] == 0
    code, out = run_json("remove", "--prefix", site.prefix, "demo", "1.0.0")
    assert code == 0, out
    code, out = site.install("b3")
    assert code == 5 and "1.0.0" in out["error"]["message"], out  # type: ignore[index]
    assert os.readlink(site.home / "current") == "2.0.0"


def test_rejects_delta_claiming_a_hash_the_base_lacks(site: Site, make_key: Callable[[str], KeyPair]) -> None:
    """A signed delta whose manifest takes a file from the base that the base never had."""
    from gapship.bundler.sign import write_signature
    from gapship.installer.formats.manifest import Manifest

    _v1(site)
    assert site.build(site.spec({**V1, "n.txt": b"n\n"}, "2.0.0"), "b2", "--base", site.root / "b1")[0] == 0
    raw = json.loads((site.root / "b2/manifest.json").read_bytes())
    for f in raw["components"][0]["files"]:
        if f.get("source") == "base" and f["path"].endswith("weights.bin"):
            f["hash"] = "ab" * 32
    m = Manifest.from_dict(raw)
    data = m.to_bytes()
    (site.root / "b2/manifest.json").write_bytes(data)
    shutil.rmtree(site.root / "b2/signatures")
    (site.root / "b2/signatures").mkdir()
    write_signature(site.root / "b2", data, site.key.key)
    shutil.rmtree(site.root / "b2/provenance")  # it names the old manifest (docs/format.md 11.4)
    code, out = site.install("b2")
    assert code == 3, out
    assert "has no file of that sha256 hash" in out["error"]["message"]  # type: ignore[index]
    assert not (site.home / "2.0.0").exists()


def test_rejects_base_signed_by_an_untrusted_key(site: Site, make_key: Callable[[str], KeyPair]) -> None:
    _v1(site, install=False)
    stranger = make_key("stranger")
    code, out = run_json("build", site.spec(V1, "2.0.0"), "--out", site.root / "b2", "--key", stranger.private,
                         "--base", site.root / "b1")
    assert code == 4, out
    assert not (site.root / "b2").exists()
    # With --base-trust the base is checked against that trust directory instead.
    code, out = run_json("build", site.spec(V1, "2.0.0"), "--out", site.root / "b2", "--key", stranger.private,
                         "--base", site.root / "b1", "--base-trust", site.trust)
    assert code == 0, out


def test_rejects_base_with_another_hash_algorithm(site: Site) -> None:
    _v1(site, install=False)
    code, out = site.build(site.spec(V1, "2.0.0"), "b2", "--base", site.root / "b1", "--hash", "sha384")
    assert_error(out, code=2, kind="usage", subject="sha256")
    assert code == 2 and "--hash sha256" in out["error"]["message"]  # type: ignore[index]


def test_shared_files_stay_read_only_and_correct_after_the_base_is_pruned(site: Site) -> None:
    _v1(site)
    assert site.build(site.spec(V1, "2.0.0", policy=POLICY + b"#2\n"), "b2", "--base", site.root / "b1")[0] == 0
    code, out = site.install("b2")
    assert code == 0, out
    weights = site.home / "2.0.0/models/tiny/weights.bin"
    shared = out["shared"]
    assert isinstance(shared, dict)
    if shared["hardlink"]:
        assert stat.S_IMODE(weights.stat().st_mode) == 0o444
    code, out = run_json("prune", "--prefix", site.prefix, "--keep", "1")
    assert code == 0 and out["removed"] == [{"name": "demo", "version": "1.0.0"}], out
    assert not (site.home / "1.0.0").exists()
    assert weights.read_bytes() == WEIGHTS
    assert weights.stat().st_mode & 0o222 == 0 or not shared["hardlink"]
    # And still adopted as complete and correct.
    code, out = run_json("install", site.root / "b2", "--trust", site.trust, "--prefix", site.prefix,
                         "--allow-reinstall")
    assert code == 0 and out["status"] == "already-installed", out


def test_full_bundle_shares_files_with_an_installed_version(site: Site) -> None:
    _v1(site)
    assert site.build(site.spec(V1, "2.0.0", policy=POLICY + b"#2\n"), "b2")[0] == 0  # full, no --base
    code, out = site.install("b2")
    assert code == 0, out
    shared = out["shared"]
    assert isinstance(shared, dict) and shared["reflink"] + shared["hardlink"] == 2, shared
    a, b = site.home / "1.0.0/models/tiny/weights.bin", site.home / "2.0.0/models/tiny/weights.bin"
    assert b.read_bytes() == WEIGHTS
    if shared["hardlink"]:
        assert a.stat().st_ino == b.stat().st_ino and b.stat().st_mode & 0o222 == 0


def test_inspect_and_status_show_the_base(site: Site) -> None:
    _v1(site)
    assert site.build(site.spec({**V1, "n.txt": b"new\n"}, "2.0.0"), "b2", "--base", site.root / "b1")[0] == 0
    code, out = run_json("inspect", site.root / "b2")
    assert code == 0, out
    assert out["base"]["version"] == "1.0.0"  # type: ignore[index]
    assert out["from_base"] == {"files": 2, "bytes": len(WEIGHTS) + len(CONFIG)}
    assert out["carried"]["files"] == 3  # n.txt, the policy and the SBOM  # type: ignore[index]
    assert site.install("b2")[0] == 0
    code, out = run_json("status", "--prefix", site.prefix)
    assert code == 0, out
    versions = {v["version"]: v for v in out["bundles"][0]["versions"]}  # type: ignore[index]
    assert versions["1.0.0"]["base"] is None
    assert versions["2.0.0"]["base"]["version"] == "1.0.0"
    assert sum(versions["2.0.0"]["shared"].values()) == 2


def test_rejects_removing_current_and_keeps_the_floor(site: Site) -> None:
    _v1(site)
    assert site.build(site.spec({**V1, "n.txt": b"n\n"}, "2.0.0"), "b2", "--base", site.root / "b1")[0] == 0
    assert site.install("b2")[0] == 0
    before = tree(site.home / "2.0.0")
    code, out = run_json("remove", "--prefix", site.prefix, "demo", "2.0.0")
    assert code == 5 and "is current" in out["error"]["message"], out  # type: ignore[index]
    assert tree(site.home / "2.0.0") == before
    # Switch back to 1.0.0 (a logged downgrade), then remove 2.0.0, the highest: the floor stays at 2.0.0.
    code, out = run_json("install", site.root / "b1", "--trust", site.trust, "--prefix", site.prefix,
                         "--allow-downgrade")
    assert code == 0, out
    code, out = run_json("remove", "--prefix", site.prefix, "demo", "2.0.0")
    assert code == 0, out
    assert not (site.home / "2.0.0").exists()
    assert not [p for p in site.home.iterdir() if p.name.startswith(".removing-")]
    code, out = site.install("b2")  # a delta: its base is there, but 2.0.0 is at the floor
    assert code == 5, out
    code, out = run_json("install", site.root / "b2", "--trust", site.trust, "--prefix", site.prefix,
                         "--allow-reinstall")
    assert code == 0, out


def test_removal_is_on_the_audit_record(site: Site) -> None:
    _v1(site)
    assert site.build(site.spec({**V1, "n.txt": b"n\n"}, "2.0.0"), "b2", "--base", site.root / "b1")[0] == 0
    assert site.install("b2")[0] == 0
    log = site.root / "audit.jsonl"
    code, out = run_json("remove", "--prefix", site.prefix, "demo", "1.0.0", "--audit-log", log)
    assert code == 0, out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["decision"] for r in records] == ["intent", "accepted"]
    assert records[0]["remove"]["bundle"] == {"name": "demo", "version": "1.0.0"}
    assert records[1]["intent"]["seq"] == 1
    code, out = run_json("audit", "verify", "--log", log)  # the chain holds, and so do the prefix's references
    assert code == 0, out


def test_delta_install_on_btrfs_uses_reflinks(site: Site) -> None:
    from loopfs import loop_filesystem_skip, run_on_btrfs

    reason = loop_filesystem_skip()
    if reason:
        pytest.skip(reason)
    _v1(site, install=False)
    assert site.build(site.spec(V1, "2.0.0", policy=POLICY + b"#2\n"), "b2", "--base", site.root / "b1")[0] == 0
    gapship = str(gapship_script())
    script = site.root / "inner.sh"
    script.write_text(f'set -e\n"{gapship}" install "{site.root / "b1"}" --trust "{site.trust}" --prefix "$1/p" >/dev/null\n'
                      f'"{gapship}" install "{site.root / "b2"}" --trust "{site.trust}" --prefix "$1/p" --json\n'
                      f'cmp "$1/p/demo/2.0.0/models/tiny/weights.bin" "{site.root / "spec1/model/weights.bin"}"\n'
                      f'stat -c %a "$1/p/demo/2.0.0/models/tiny/weights.bin"\n')
    done = run_on_btrfs(site.root, ["sh", str(script), "MNT"])
    assert done.returncode == 0, done.stderr
    *body, mode = done.stdout.strip().splitlines()
    out = json.loads("\n".join(body))
    assert out["shared"] == {"reflink": 2, "hardlink": 0, "copy": 0}, out
    assert mode == "644"  # a reflink is a private file: it keeps the manifest's mode
