"""An install killed midway (SIGKILL, so no handler runs) leaves the previous version active and
intact; running the same command again finishes the job and leaves no staging litter.

This drives the real ``gapship`` console script in a subprocess: only a separate process can be
killed without cleanup, the way a power cut or the OOM killer would stop it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from gapship_testing import KeyPair, gapship_script, noise, run_json, tree

# 16 MiB in 256 chunks of 64 KiB: the install spends 100+ ms with data in staging (hashing, writing,
# flushing), against a 0.5 ms poll; few chunks keep the build's per-chunk fsync cheap.
BIG = 16 * 1024 * 1024
CHUNK = 64 * 1024
POLL = 0.0005


def _staging_dirs(home: Path) -> list[Path]:
    try:
        return [p for p in home.iterdir() if p.name.startswith(".staging-")]
    except FileNotFoundError:
        return []


def _kill_once_staging_holds_data(proc: subprocess.Popen[bytes], home: Path) -> None:
    """SIGKILL ``proc`` as soon as its staging directory holds part of the model file."""
    while proc.poll() is None:
        for staging in _staging_dirs(home):
            partial = staging / "models" / "tiny" / "weights.bin"
            try:
                started = partial.stat().st_size > 0
            except FileNotFoundError:
                started = False
            if started:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
        time.sleep(POLL)
    raise AssertionError(f"install ended (exit {proc.returncode}) before it could be killed midway")


def test_killed_install_keeps_previous_and_rerun_succeeds(
        tmp_path: Path, make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
        make_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    trust = make_trust(key)
    prefix = tmp_path / "prefix"
    home = prefix / "demo"
    old = make_bundle(key, version="0.9.0", files={"weights.bin": noise(5000, seed=1)})
    big = noise(BIG, seed=2)
    new = make_bundle(key, version="1.0.0", chunk_size=CHUNK, files={"weights.bin": big})
    assert run_json("install", old, "--trust", trust, "--prefix", prefix)[0] == 0
    previous = tree(home / "0.9.0")
    command = [str(gapship_script()), "install", str(new), "--trust", str(trust), "--prefix", str(prefix), "--json"]

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_once_staging_holds_data(proc, home)
    assert proc.returncode == -signal.SIGKILL
    assert os.readlink(home / "current") == "0.9.0"
    assert tree(home / "0.9.0") == previous
    assert not (home / "1.0.0").exists()
    assert _staging_dirs(home), "the killed install should have left its staging directory behind"

    rerun = subprocess.run(command, capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    out = json.loads(rerun.stdout)
    assert (out["status"], out["previous"]) == ("installed", "0.9.0")
    assert os.readlink(home / "current") == "1.0.0"
    assert (home / "current" / "models" / "tiny" / "weights.bin").read_bytes() == big
    assert tree(home / "0.9.0") == previous
    assert not _staging_dirs(home)
    assert sorted(p.name for p in home.iterdir()) == [".lock", "0.9.0", "1.0.0", "current"]
