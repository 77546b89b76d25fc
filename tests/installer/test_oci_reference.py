"""oci:// references and registry credentials (installer/oci/reference.py, auth.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gapship.installer.errors import HostError, UsageError
from gapship.installer.oci.artifact import safe_path
from gapship.installer.oci.auth import load_credentials, parse_challenge
from gapship.installer.oci.reference import parse_reference


def test_parses_tags_digests_and_ports() -> None:
    r = parse_reference("oci://registry.enclave:5000/models/demo:1.0")
    assert (r.host, r.hostname, r.port, r.repository, r.reference) == (
        "registry.enclave:5000", "registry.enclave", 5000, "models/demo", "1.0")
    d = "sha256:" + "ab" * 32
    r = parse_reference(f"oci://[::1]:5000/demo@{d}")
    assert (r.hostname, r.port, r.digest, r.reference) == ("::1", 5000, d, d)
    assert r.is_loopback()
    assert parse_reference("oci://localhost/demo").reference == "latest"
    assert not parse_reference("oci://10.0.0.1/demo").is_loopback()


@pytest.mark.parametrize("text", ["oci://", "oci://host", "oci://host/", "oci://host/UPPER:1", "oci://host/a:b:c",
                                  "oci://host/demo@sha256:xyz", "docker://host/demo:1", "oci://ho st/demo:1",
                                  "oci://host/../demo:1"])
def test_rejects_malformed_reference(text: str) -> None:
    with pytest.raises(UsageError):
        parse_reference(text)


def test_reads_docker_config_auths(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"fleet:pa:ss").decode()
    config.write_text(json.dumps({"auths": {"https://reg.enclave:5000/v1/": {"auth": auth},
                                            "other:1": {"username": "u", "password": "p"}}}))
    creds = load_credentials("reg.enclave:5000", config=config)
    assert (creds.username, creds.password) == ("fleet", "pa:ss")
    assert load_credentials("other:1", config=config).basic() == "Basic " + base64.b64encode(b"u:p").decode()
    assert load_credentials("unknown", config=config).basic() is None


def test_rejects_a_broken_registry_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"auths": {"h": {"auth": "!!!"}}}')
    with pytest.raises(UsageError, match="base64"):
        load_credentials("h", config=config)
    with pytest.raises(UsageError, match="does not exist"):
        load_credentials("h", config=tmp_path / "missing.json")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    config.write_text("{not json")
    with pytest.raises(HostError):  # the default file is the host's: exit 7
        load_credentials("h", config=None)


def test_parses_bearer_challenge() -> None:
    c = parse_challenge('Bearer realm="https://auth.enclave/token",service="registry",scope="repository:a/b:pull,push"')
    assert c is not None and c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.enclave/token", "service": "registry", "scope": "repository:a/b:pull,push"}


@pytest.mark.parametrize("path, ok", [("manifest.json", True), ("chunks/00001.bin", True),
                                      ("signatures/k.ed25519.sig", True), ("authorizations/a/signatures/k.sig", True),
                                      ("parity/signatures/k.sig", True), ("../etc/passwd", False),
                                      ("chunks/../x", False), ("chunks/.hidden", False), ("/abs", False),
                                      ("chunks/a/b", False), ("other/x", False), ("manifest.json/x", False),
                                      ("signatures/", False)])
def test_artifact_paths_stay_inside_the_bundle(path: str, ok: bool) -> None:
    assert safe_path(path) is ok
