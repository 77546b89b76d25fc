"""Fixtures for the security suite: the site every test attacks (tests/support/attack_site.py), a trust
store and a prefix where version 1.0.0 of "demo" is installed and active.

The key, the real bundles (1.0.0 and the "next" 3.0.0, built by gapship's own bundler) and an installed
1.0.0 prefix are made once per session; each test gets a private copy of that prefix, so a test costs
one copy instead of a key generation, two builds and an install (each with its fsyncs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from attack_site import (
    NEXT_FILES, PREVIOUS_FILES, VICTIM_CHUNK_SIZE, VICTIM_CHUNKS, Site, Template, build_real_bundle, chunk_file,
    victim_files,
)
from gapship.bundler.keys import SigningKey, keygen
from gapship_testing import KeyPair, run_json


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("security-site")
    private, public, _ = keygen("release", base / "keys")
    key = KeyPair("release", private, public, SigningKey.load(private))
    trust = base / "trust"
    trust.mkdir()
    shutil.copy(public, trust / public.name)
    previous = build_real_bundle(base, key, version="1.0.0", files=PREVIOUS_FILES)
    nxt = build_real_bundle(base, key, version="3.0.0", files=NEXT_FILES)
    prefix = base / "prefix"
    code, out = run_json("install", previous, "--trust", trust, "--prefix", prefix)
    assert code == 0, out
    return Template(key, trust, previous, nxt, prefix)


@pytest.fixture
def site(tmp_path: Path, template: Template) -> Site:
    prefix = tmp_path / "prefix"
    shutil.copytree(template.prefix, prefix, symlinks=True)
    s = Site(tmp=tmp_path, key=template.key, trust=template.trust, prefix=prefix, next_bundle=template.next_bundle,
             previous_bundle=template.previous_bundle)
    s.assert_previous_intact()
    return s


@pytest.fixture(scope="session")
def victims(tmp_path_factory: pytest.TempPathFactory, template: Template) -> tuple[Path, Path]:
    """Two real bundles of demo 2.0.0 with the same layout and different bytes in every chunk."""
    base = tmp_path_factory.mktemp("victims")
    one = build_real_bundle(base / "one", template.key, version="2.0.0", files=victim_files(b"one"),
                            chunk_size=VICTIM_CHUNK_SIZE)
    other = build_real_bundle(base / "other", template.key, version="2.0.0", files=victim_files(b"two"),
                              chunk_size=VICTIM_CHUNK_SIZE)
    assert len(list((one / "chunks").iterdir())) == VICTIM_CHUNKS
    for i in range(VICTIM_CHUNKS):
        assert chunk_file(one, i).read_bytes() != chunk_file(other, i).read_bytes()
    return one, other


@pytest.fixture
def victim(victims: tuple[Path, Path], tmp_path: Path) -> Path:
    """A private copy of the first victim bundle, free to damage."""
    return Path(shutil.copytree(victims[0], tmp_path / "victim"))
