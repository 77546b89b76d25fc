"""The payload is one POSIX tar stream cut into chunks: ``cat chunks/* | tar -x`` must give back
exactly the manifest's files (docs/format.md, "Payload"), with the system's own tar."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from gapship_testing import KeyPair, noise

FILES = {
    "config.json": b'{"hidden": 4}\n',
    "weights.bin": noise(50_000, seed=1),
    "empty": b"",
    "deep/" + "d" * 90 + "/" + "f" * 80 + ".bin": noise(1000, seed=2),  # needs a pax path record
    "modèle/naïve-日本.bin": noise(513, seed=3),  # needs a pax path record
    "run.sh": b"#!/bin/sh\n",
}


@pytest.fixture
def bundle(make_key: Callable[[str], KeyPair], make_bundle: Callable[..., Path], tmp_path: Path) -> Path:
    if shutil.which("tar") is None:
        pytest.skip("no tar(1) on this host")
    return make_bundle(make_key("release"), out=tmp_path / "bundle", chunk_size=4096, files=FILES)


def _shell(command: str) -> subprocess.CompletedProcess[bytes]:
    """The admin's pipeline, as written in docs/format.md (the shell sorts chunks/* by name)."""
    return subprocess.run(command, shell=True, capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8"})


def _manifest_files(bundle: Path) -> dict[str, dict[str, object]]:
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    return {f["path"]: f for c in manifest["components"] for f in c["files"]}


def test_cat_chunks_into_tar_extracts_exactly_the_manifest_files(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "extracted"
    out.mkdir()
    done = _shell(f"cat {shlex.quote(str(bundle))}/chunks/* | tar -x -f - -C {shlex.quote(str(out))}")
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    expected = _manifest_files(bundle)
    found = {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir()}
    assert found == set(expected)
    for path, entry in expected.items():
        data = (out / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["hash"] and len(data) == entry["size"]
    for rel, data in FILES.items():
        assert (out / "models" / "tiny" / rel).read_bytes() == data


def test_tar_lists_only_regular_files(bundle: Path) -> None:
    listing = _shell(f"cat {shlex.quote(str(bundle))}/chunks/* | tar -t -v -f -")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.decode("utf-8").splitlines()
    assert len(lines) == len(_manifest_files(bundle))
    assert all(line.startswith("-") for line in lines), lines  # no dirs, links, devices, pax leftovers
