"""The main path: keygen, build, verify, install, inspect, through the CLI."""

from __future__ import annotations

from pathlib import Path

from gapship_testing import run_json


def test_round_trip_installs_exact_files(tmp_path: Path, make_key, make_trust, make_bundle) -> None:
    key = make_key("release")
    files = {"config.json": b"{}\n", "sub/dir/weights.bin": bytes(range(256)) * 1000, "empty": b""}
    bundle = make_bundle(key, files=files)
    trust = make_trust(key)
    prefix = tmp_path / "prefix"

    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 0, out
    assert out["signers"] == [key.keyid]

    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix)
    assert code == 0, out
    assert out["status"] == "installed"
    active = prefix / "demo" / "current"
    assert active.is_symlink() and active.readlink() == Path("1.0.0")
    for rel, data in files.items():
        assert (active / "models" / "tiny" / rel).read_bytes() == data
    assert (active / "safeguards" / "policy.toml").is_file()
    assert not [p for p in (prefix / "demo").iterdir() if p.name.startswith(".staging-")]
