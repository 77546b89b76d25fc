"""install --hf-cache (installer/host/hfcache.py, docs/huggingface.md): the installed models, found by
repo id by huggingface_hub itself (and transformers, when installed) with HF_HUB_OFFLINE=1, through
upgrade, rollback and removal; and every way the cache directory or a repo id can be wrong."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gapship_testing import KeyPair, run_json
from hf_testing import add_snapshot, commit_of, small_model, write_hf_spec
from safeguards_testing import Host, isolated_host  # noqa: F401 (a fixture)

pytest.importorskip("huggingface_hub")

V1, V2 = commit_of("v1"), commit_of("v2")
SELECT = 'include = ["*.json", "*.safetensors"]'
KEPT = sorted(p for p in small_model(1) if p.endswith((".json", ".safetensors")))

CLIENT = r"""
import hashlib, json, os, sys
from huggingface_hub import hf_hub_download, snapshot_download
repo = sys.argv[1]
folder = snapshot_download(repo)
files = {}
for root, _dirs, names in os.walk(folder):
    for name in names:
        path = os.path.join(root, name)
        files[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
config = hf_hub_download(repo, "config.json")
out = {"folder": folder, "files": files, "config": open(config).read(), "real": os.path.realpath(config)}
if len(sys.argv) > 2:
    from transformers import AutoConfig, AutoTokenizer
    out["config_class"] = type(AutoConfig.from_pretrained(repo)).__name__
    out["ids"] = AutoTokenizer.from_pretrained(repo)("hello air gap")["input_ids"]
print(json.dumps(out))
"""


class Site:
    def __init__(self, root: Path, key: KeyPair, trust: Path) -> None:
        self.root, self.key, self.trust = root, key, trust
        self.cache = root / "build" / "hub"  # the release engineer's
        self.prefix = root / "prefix"
        self.hf = root / "serving" / "hf-cache"  # the site's
        add_snapshot(self.cache, "org/tiny", small_model(1), commit=V1)
        self.bundles: dict[str, Path] = {}

    def build(self, version: str, *, commit: str = V1, models: dict[str, str] | None = None,
              name: str = "demo") -> Path:
        if commit != V1 and not (self.cache / "models--org--tiny" / "snapshots" / commit).exists():
            add_snapshot(self.cache, "org/tiny", small_model(2), commit=commit)
        models = models or {"tiny": f'hf_repo = "org/tiny"\nrevision = "{commit}"\ncache_dir = "hub"\n{SELECT}'}
        spec = write_hf_spec(self.cache.parent, models, name=name, version=version)
        out = self.root / f"bundle-{name}-{version}"
        code, result = run_json("build", spec, "--out", out, "--key", self.key.private)
        assert code == 0, result
        return out

    def install(self, bundle: Path, *extra: str | Path, hf: Path | None = None) -> tuple[int, dict[str, object]]:
        return run_json("install", bundle, "--trust", self.trust, "--prefix", self.prefix,
                        "--hf-cache", hf or self.hf, *extra)

    def client(self, repo: str = "org/tiny", *, transformers: bool = False) -> dict[str, object]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(self.hf), HF_HOME=str(self.root / "hf-home"),
                   TRANSFORMERS_OFFLINE="1")
        args = [sys.executable, "-c", CLIENT, repo, *(["transformers"] if transformers else [])]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def site(tmp_path: Path, make_key, make_trust) -> Site:
    key = make_key("release")
    return Site(tmp_path, key, make_trust(key))


def _hashes(files: dict[str, bytes], names: list[str]) -> dict[str, str]:
    return {n: hashlib.sha256(files[n]).hexdigest() for n in names}


def test_snapshot_download_offline_returns_the_installed_files_byte_for_byte(site: Site) -> None:
    code, out = site.install(site.build("1.0.0"))
    assert code == 0, out
    assert out["hf_cache"] == {"dir": str(site.hf), "version": "1.0.0", "removed": [], "repos": [
        {"repo": "org/tiny", "model": "tiny", "commit": V1, "files": len(KEPT), "path": str(site.hf / "models--org--tiny")}]}
    seen = site.client()
    assert seen["folder"] == str(site.hf / "models--org--tiny" / "snapshots" / V1)
    assert seen["files"] == _hashes(small_model(1), KEPT)
    assert seen["config"] == small_model(1)["config.json"].decode()
    # no second copy: the cache's file is the installed, read-only one
    installed = site.prefix / "demo" / "1.0.0" / "models" / "tiny" / "config.json"
    assert seen["real"] == str(installed.resolve())
    assert (site.hf / "models--org--tiny" / "refs" / "main").read_text() == V1


def test_transformers_loads_config_and_tokenizer_offline(site: Site) -> None:
    pytest.importorskip("transformers")
    assert site.install(site.build("1.0.0"))[0] == 0
    seen = site.client(transformers=True)
    assert seen["config_class"] == "BertConfig"
    assert seen["ids"] == [2, 4, 5]  # hello, air, gap in the tokenizer.json of small_model


def test_upgrade_rollback_and_removal_keep_the_published_cache_consistent(site: Site) -> None:
    v1, v2 = site.build("1.0.0"), site.build("2.0.0", commit=V2)
    assert site.install(v1)[0] == 0
    code, out = site.install(v2)
    assert code == 0, out
    assert site.client()["files"] == _hashes(small_model(2), KEPT)
    assert (site.hf / "models--org--tiny" / "refs" / "main").read_text() == V2
    assert not (site.hf / "models--org--tiny" / "snapshots" / V1).exists()
    assert len(os.listdir(site.hf / ".gapship-hf" / "demo")) == 1  # the old tree is gone

    code, out = site.install(v1, "--allow-downgrade")  # a rollback switches the cache back
    assert code == 0, out
    assert site.client()["files"] == _hashes(small_model(1), KEPT)

    code, out = run_json("remove", "--prefix", site.prefix, "demo", "2.0.0", "--hf-cache", site.hf)
    assert code == 0, out
    assert out["hf_cache"]["version"] == "1.0.0" and out["hf_cache"]["removed"] == []
    assert site.client()["files"] == _hashes(small_model(1), KEPT)
    code, out = run_json("prune", "--prefix", site.prefix, "--keep", "1", "--hf-cache", site.hf)
    assert code == 0, out
    assert site.client()["files"] == _hashes(small_model(1), KEPT)


def test_a_model_the_new_version_drops_is_unpublished(site: Site) -> None:
    both = {"tiny": f'hf_repo = "org/tiny"\ncache_dir = "hub"\n{SELECT}', "extra": 'source = "extra"\nhf_repo = "org/extra"'}
    (site.cache.parent / "extra").mkdir(parents=True)
    (site.cache.parent / "extra" / "config.json").write_text("{}")
    assert site.install(site.build("1.0.0", models=both))[0] == 0
    assert site.client("org/extra")["files"] == {"config.json": hashlib.sha256(b"{}").hexdigest()}
    code, out = site.install(site.build("2.0.0"))
    assert code == 0, out
    assert out["hf_cache"]["removed"] == ["org/extra"]
    assert not os.path.lexists(site.hf / "models--org--extra")


def test_model_without_hf_repo_is_published_as_bundle_slash_model(site: Site) -> None:
    (site.cache.parent / "plain").mkdir(parents=True)
    (site.cache.parent / "plain" / "config.json").write_text('{"a": 1}')
    code, out = site.install(site.build("1.0.0", models={"plain": 'source = "plain"'}))
    assert code == 0, out
    repo = out["hf_cache"]["repos"][0]
    assert repo["repo"] == "demo/plain" and len(repo["commit"]) == 40
    assert site.client("demo/plain")["config"] == '{"a": 1}'


def test_site_file_hf_cache_is_the_default(site: Site, isolated_host: Host) -> None:
    config = site.root / "site.toml"
    config.write_text(f'site_id = "test-site"\nsafeguards = []\nhf_cache = "{site.hf}"\n')
    code, out = run_json("install", site.build("1.0.0"), "--trust", site.trust, "--prefix", site.prefix,
                         "--site-config", config, "--audit-log", site.root / "audit.jsonl")
    assert code == 0, out
    assert out["hf_cache"]["dir"] == str(site.hf)
    assert site.client()["files"] == _hashes(small_model(1), KEPT)


def test_rejects_hf_cache_that_is_a_symlink(site: Site) -> None:
    real = site.root / "real-hf"
    real.mkdir()
    site.hf.parent.mkdir(parents=True)
    site.hf.symlink_to(real)
    code, out = site.install(site.build("1.0.0"))
    assert code == 7 and "Hugging Face cache" in out["error"]["message"] and "is a symlink" in out["error"]["message"]
    assert not (site.prefix / "demo" / "1.0.0").exists()


def test_rejects_hf_cache_writable_by_others(site: Site) -> None:
    site.hf.mkdir(parents=True)
    os.chmod(site.hf, 0o777)
    code, out = site.install(site.build("1.0.0"))
    assert code == 7 and "writable by group and others" in out["error"]["message"]
    assert not (site.prefix / "demo" / "1.0.0").exists()


def test_rejects_repo_id_the_cache_already_holds_from_the_hub(site: Site) -> None:
    add_snapshot(site.hf, "org/tiny", {"config.json": b"{}"}, commit=commit_of("hub"))
    code, out = site.install(site.build("1.0.0"))
    assert code == 7
    assert "models--org--tiny is already in the Hugging Face cache and was not published by gapship" in out["error"]["message"]
    assert not (site.prefix / "demo" / "1.0.0").exists()


def test_rejects_two_bundles_publishing_the_same_repo_id(site: Site) -> None:
    assert site.install(site.build("1.0.0"))[0] == 0
    code, out = site.install(site.build("1.0.0", name="other"))
    assert code == 7
    assert out["error"]["message"].startswith(f"org/tiny is already published in {site.hf} by bundle 'demo'")
    assert not (site.prefix / "other").exists() or not (site.prefix / "other" / "1.0.0").exists()
    assert site.client()["files"] == _hashes(small_model(1), KEPT)


def test_killed_publish_leftovers_are_cleaned_by_the_next_run(site: Site) -> None:
    assert site.install(site.build("1.0.0"))[0] == 0
    litter = site.hf / ".gapship-hf" / "demo" / "0123456789ab"
    (litter / "models--org--tiny" / "snapshots").mkdir(parents=True)
    os.symlink(".gapship-hf/demo/0123456789ab/models--org--tiny", site.hf / ".models--org--tiny.0123456789ab")
    code, out = run_json("prune", "--prefix", site.prefix, "--hf-cache", site.hf)
    assert code == 0, out
    assert not litter.exists() and not os.path.lexists(site.hf / ".models--org--tiny.0123456789ab")
    assert site.client()["files"] == _hashes(small_model(1), KEPT)


def test_another_bundles_repos_are_left_alone(site: Site) -> None:
    (site.cache.parent / "plain").mkdir(parents=True)
    (site.cache.parent / "plain" / "config.json").write_text("{}")
    assert site.install(site.build("1.0.0"))[0] == 0
    assert site.install(site.build("1.0.0", name="other", models={"plain": 'source = "plain"'}))[0] == 0
    code, out = site.install(site.build("2.0.0", commit=V2))
    assert code == 0, out
    assert out["hf_cache"]["removed"] == []
    assert site.client("other/plain")["config"] == "{}"
    assert site.client()["files"] == _hashes(small_model(2), KEPT)


def test_rejects_hf_cache_that_is_a_file(site: Site) -> None:
    site.hf.parent.mkdir(parents=True)
    site.hf.write_text("")
    code, out = site.install(site.build("1.0.0"))
    assert code == 7 and out["error"]["message"] == f"Hugging Face cache {site.hf} is not a directory"


@pytest.mark.parametrize("value", ['"relative/dir"', "3", '"/srv/a\\u0007b"'])
def test_rejects_site_file_hf_cache_that_is_not_an_absolute_path(site: Site, value: str) -> None:
    config = site.root / "site.toml"
    config.write_text(f'site_id = "test-site"\nsafeguards = []\nhf_cache = {value}\n')
    code, out = run_json("install", site.build("1.0.0"), "--trust", site.trust, "--prefix", site.prefix,
                         "--site-config", config, "--audit-log", site.root / "audit.jsonl")
    assert code == 2 and "hf_cache" in out["error"]["message"] and "must be an absolute directory path" in out["error"]["message"]
