"""A delta install killed midway, and a prune racing an install: driven through the real ``gapship``
console script in a subprocess, the only way to stop it without any cleanup running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gapship_testing import KeyPair, gapship_script, noise, run_json, tree

BIG = 16 * 1024 * 1024
POLL = 0.0005


def _staging(home: Path) -> list[Path]:
    try:
        return [p for p in home.iterdir() if p.name.startswith(".staging-")]
    except FileNotFoundError:
        return []


def _wait_for_staged(proc: subprocess.Popen[bytes], home: Path, rel: str) -> None:
    while proc.poll() is None:
        for staging in _staging(home):
            try:
                if (staging / rel).stat().st_size > 0:
                    return
            except FileNotFoundError:
                pass
        time.sleep(POLL)
    raise AssertionError(f"install ended (exit {proc.returncode}) before it reached {rel}")


@pytest.fixture
def delta(tmp_path: Path, make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
          make_spec: Callable[..., Path]) -> tuple[list[str], Path, Path]:
    key = make_key("release")
    trust = make_trust(key)
    prefix = tmp_path / "prefix"
    files = {"weights.bin": noise(BIG, seed=5), "config.json": b"{}\n"}
    b1, b2 = tmp_path / "b1", tmp_path / "b2"
    assert run_json("build", make_spec(files), "--out", b1, "--key", key.private)[0] == 0
    assert run_json("install", b1, "--trust", trust, "--prefix", prefix)[0] == 0
    spec2 = make_spec({**files, "more.bin": noise(BIG, seed=6)}, version="2.0.0")
    assert run_json("build", spec2, "--out", b2, "--key", key.private, "--chunk-size", "64KiB", "--base", b1)[0] == 0
    return [str(gapship_script()), "install", str(b2), "--trust", str(trust), "--prefix", str(prefix), "--json"], \
        prefix, tmp_path


@pytest.mark.slow  # two 16 MiB builds and installs, in subprocesses
def test_killed_delta_install_keeps_the_base_and_rerun_finishes(delta: tuple[list[str], Path, Path]) -> None:
    command, prefix, _ = delta
    home = prefix / "demo"
    before = tree(home / "1.0.0")
    env = {**os.environ, "GAPSHIP_SHARE": "copy"}  # copies: the reused file takes long enough to be caught
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _wait_for_staged(proc, home, "models/tiny/weights.bin")  # being copied from the installed base
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.readlink(home / "current") == "1.0.0" and not (home / "2.0.0").exists()
    assert tree(home / "1.0.0") == before
    rerun = subprocess.run(command, capture_output=True, timeout=120, env=env)
    assert rerun.returncode == 0, rerun.stderr
    out = json.loads(rerun.stdout)
    assert out["status"] == "installed" and out["shared"]["copy"] == 2, out
    assert os.readlink(home / "current") == "2.0.0" and not _staging(home)
    assert (home / "2.0.0/models/tiny/weights.bin").read_bytes() == (home / "1.0.0/models/tiny/weights.bin").read_bytes()


@pytest.mark.slow
def test_prune_racing_an_install_refuses_and_removes_nothing(delta: tuple[list[str], Path, Path]) -> None:
    command, prefix, _ = delta
    home = prefix / "demo"
    before = tree(home / "1.0.0")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _wait_for_staged(proc, home, "models/tiny/more.bin")
    code, out = run_json("prune", "--prefix", prefix, "--keep", "1")
    assert code == 7 and "target busy" in out["error"]["message"], out  # type: ignore[index]
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout
    assert tree(home / "1.0.0") == before  # the prune removed nothing: the install used the whole base
    code, out = run_json("prune", "--prefix", prefix, "--keep", "1")
    assert code == 0 and out["removed"] == [{"name": "demo", "version": "1.0.0"}], out
    assert (home / "2.0.0/models/tiny/weights.bin").stat().st_size == BIG
