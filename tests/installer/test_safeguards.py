"""Site identity and the bundle's safeguards policy, enforced at install (docs/safeguards.md)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gapship.installer.errors import IntegrityError, UsageError
from gapship.installer.safeguards import read_bundled_policy
from gapship.installer.formats.site import parse_site
from gapship.installer.bundle.files import read_raw_bundle
from gapship.installer.trust import TrustStore, verify_manifest
from gapship_testing import run, run_json, tree
from safeguards_testing import MODELS, SITE_POLICY, build_bundle, isolated_host, site_file  # noqa: F401

pytestmark = pytest.mark.usefixtures("isolated_host")


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
