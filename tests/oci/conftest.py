"""Fixtures for the OCI tests: real registries (CNCF distribution) started once per test process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gapship_testing import KeyPair, noise
from oci_testing import Registry, have_registry, registry_config, start_registry


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """distribution on 127.0.0.1 with TLS from a test CA and htpasswd auth."""
    reason = have_registry()
    if reason:
        pytest.skip(reason)
    registry = start_registry(tmp_path_factory.mktemp("tls-registry"), tls=True)
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A second distribution, plain HTTP on loopback, no auth (skopeo's copy target)."""
    reason = have_registry()
    if reason:
        pytest.skip(reason)
    registry = start_registry(tmp_path_factory.mktemp("plain-registry"), tls=False)
    yield registry
    registry.stop()


@pytest.fixture
def creds(tmp_path: Path, tls_registry: Registry) -> Path:
    return registry_config(tmp_path / "docker-config.json", tls_registry.host)


@pytest.fixture
def unique_bundle(make_bundle: Callable[..., Path], request: pytest.FixtureRequest) -> Callable[..., Path]:
    """A bundle whose chunks no other test pushes (the registries' blob stores are shared)."""
    seed = abs(hash(request.node.nodeid)) % 10**9

    def make(key: KeyPair, *, version: str = "1.0.0", size: int = 40_000, extra: int = 0) -> Path:
        files = {"config.json": b'{"hidden": 4}\n', "weights.bin": noise(size, seed=seed + extra)}
        return make_bundle(key, chunk_size=4096, files=files, version=version)

    return make
