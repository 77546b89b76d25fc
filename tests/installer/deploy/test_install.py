"""Install-time host conditions: a second install of the same bundle name while one holds the lock."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from gapship_testing import KeyPair, assert_error, noise, run, run_json, tree


def test_rejects_install_while_another_holds_the_lock(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                                      make_trust: Callable[..., Path],
                                                      make_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    trust = make_trust(key)
    prefix = tmp_path / "prefix"
    old = make_bundle(key, version="0.9.0", files={"w.bin": noise(3000, seed=1)})
    new = make_bundle(key, version="1.0.0", files={"w.bin": noise(3000, seed=2)})
    assert run_json("install", old, "--trust", trust, "--prefix", prefix)[0] == 0
    lock = prefix / "demo" / ".lock"
    before = tree(prefix)

    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a concurrent gapship install would
        code, out = run_json("install", new, "--trust", trust, "--prefix", prefix)
        assert code == 7
        message = assert_error(out, code=7, kind="environment", subject=str(lock))
        assert message == f"target busy: another gapship process holds {lock}"
        result = run("install", new, "--trust", trust, "--prefix", prefix)
        assert result.exit_code == 7 and str(lock) in result.stderr
        assert tree(prefix) == before
    finally:
        os.close(fd)

    code, out = run_json("install", new, "--trust", trust, "--prefix", prefix)  # the lock is free again
    assert code == 0, out
    assert os.readlink(prefix / "demo" / "current") == "1.0.0"


def test_install_removes_staging_litter(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                        make_trust: Callable[..., Path], make_bundle: Callable[..., Path]) -> None:
    """What a killed install leaves (a half-written staging dir, a half-made current link) goes away
    on the next run; tests/cli/test_interrupted_install.py kills a real process."""
    key = make_key("release")
    bundle = make_bundle(key)
    home = tmp_path / "prefix" / "demo"
    (home / ".staging-abc123" / "models").mkdir(parents=True)
    (home / ".staging-abc123" / "models" / "half.bin").write_bytes(b"half")
    os.symlink("0.0.1", home / ".current-0123456789ab")

    code, out = run_json("install", bundle, "--trust", make_trust(key), "--prefix", home.parent)
    assert code == 0, out
    assert sorted(p.name for p in home.iterdir()) == [".lock", "1.0.0", "current"]


def test_folders_of_names_every_folder_and_each_one_above_it() -> None:
    from gapship.installer.deploy.install import _folders_of

    paths = ["top.txt", "models/a/x.bin", "models/a/deep/y.bin", "models/b/z.bin", "safeguards/policy.toml"]
    assert _folders_of(paths) == {"models", "models/a", "models/a/deep", "models/b", "safeguards"}
    assert _folders_of([]) == set()


def test_final_flush_uses_a_descriptor_opened_before_the_extraction(
        tmp_path: Path, make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
        make_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux reports a write-back error to syncfs only on descriptors opened before it, and the
    extraction starts write-back early: the final syncfs must use a descriptor opened before any
    payload byte is written, and close it afterwards."""
    from gapship.installer.deploy import install as install_module

    events: list[str] = []

    class Recording(install_module._Flush):  # type: ignore[name-defined,misc]
        def __init__(self, path: Path) -> None:
            events.append("open")
            super().__init__(path)

        def now(self) -> None:
            events.append("flush")
            super().now()

    real_extract = install_module.extract_payload

    def extract(*args: object, **kwargs: object) -> None:
        events.append("extract")
        real_extract(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(install_module, "_Flush", Recording)
    monkeypatch.setattr(install_module, "extract_payload", extract)
    key = make_key("release")
    bundle, trust = make_bundle(key, files={"a.bin": noise(5000, seed=1)}), make_trust(key)
    before = set(os.listdir("/proc/self/fd"))
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", tmp_path / "prefix")
    assert code == 0, out
    assert events == ["open", "extract", "flush"]
    assert set(os.listdir("/proc/self/fd")) <= before
