"""Shared fixtures: every test builds its own keys, model files and bundles in tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gapship.bundler.build import build
from gapship.installer.cli import audit as _cli_audit
from gapship.installer.host import audit
from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.spec import load_spec
from gapship_testing import POLICY, KeyPair, write_spec


@pytest.fixture(autouse=True, scope="session")
def _site_log_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A site host always writes the site's log (/var/log/gapship/audit.jsonl): in-process CLI runs
    with a site file write one under the session's tmp instead, never the machine's. Subprocesses
    are pointed elsewhere by the site file's ``audit_log``; tests of the default path patch it too
    (safeguards_testing.isolated_host)."""
    log = tmp_path_factory.mktemp("site-log") / "audit.jsonl"
    patch = pytest.MonkeyPatch()
    patch.setattr(audit, "DEFAULT_LOG", log)
    patch.setattr(_cli_audit, "DEFAULT_LOG", log)
    yield log
    patch.undo()


@pytest.fixture
def make_key(tmp_path: Path) -> Callable[[str], KeyPair]:
    """make_key("release") writes tmp_path/keys/release.{key,pub}."""

    def make(name: str) -> KeyPair:
        private, public, _ = keygen(name, tmp_path / "keys")
        return KeyPair(name, private, public, SigningKey.load(private))

    return make


@pytest.fixture
def make_trust(tmp_path: Path) -> Callable[..., Path]:
    """make_trust(key1, key2, name="trust") copies the keys' .pub files into a new trust directory."""

    def make(*keys: KeyPair, name: str = "trust") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for k in keys:
            (folder / k.public.name).write_bytes(k.public.read_bytes())
        return folder

    return make


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., Path]:
    """make_spec(files={"weights.bin": b"..."}, version="1.0.0") writes a model dir, policy and spec."""
    counter = iter(range(1_000_000))

    def make(files: dict[str, bytes] | None = None, *, name: str = "demo", version: str = "1.0.0",
             model: str = "tiny", policy: bytes = POLICY) -> Path:
        files = files or {"config.json": b'{"hidden": 4}\n', "weights.bin": bytes(range(256)) * 300}
        return write_spec(tmp_path / f"spec{next(counter)}", files, name=name, version=version, model=model,
                          policy=policy)

    return make


@pytest.fixture
def make_bundle(tmp_path: Path, make_spec: Callable[..., Path]) -> Callable[..., Path]:
    """make_bundle(key, files=..., version=..., chunk_size=1024) builds a signed bundle via the library."""
    counter = iter(range(1_000_000))

    def make(key: KeyPair, *, chunk_size: int = 1024, out: Path | None = None, **spec_args: object) -> Path:
        spec = make_spec(**spec_args)
        target = out or tmp_path / f"bundle{next(counter)}"
        build(load_spec(spec), out=target, key=key.key, chunk_size=chunk_size)
        return target

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``network`` need the package index; they run only with GAPSHIP_NETWORK_TESTS=1."""
    if os.environ.get("GAPSHIP_NETWORK_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="needs the package index; set GAPSHIP_NETWORK_TESTS=1 to run")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)
