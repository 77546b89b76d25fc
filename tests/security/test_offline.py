"""Offline proof: the real installer verifies and installs a bundle inside a network namespace with no
usable interface (``unshare -rn``: only a loopback device, and it is down). Nothing in gapship's
disconnected side may need the network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attack_site import Site, victim_files

PROBE = """
import errno, json, socket
try:
    socket.create_connection(("127.0.0.1", 9), timeout=2).close()
    reached = True
except OSError as e:
    reached = errno.errorcode.get(e.errno, str(e))
print(json.dumps({"interfaces": [name for _, name in socket.if_nameindex()], "loopback": reached}))
"""


def _offline(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["unshare", "-rn", *map(str, argv)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def no_network() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the kernel refuses a user+network namespace: {probe.stderr.strip()}")


def test_verify_and_install_work_without_any_network(no_network: None, site: Site, victim: Path) -> None:
    probe = _offline(sys.executable, "-c", PROBE)
    assert probe.returncode == 0, probe
    facts = json.loads(probe.stdout)
    assert facts["interfaces"] == ["lo"] and facts["loopback"] == "ENETUNREACH", facts

    installer = [sys.executable, "-m", "gapship.installer"]
    result = _offline(*installer, "verify", victim, "--trust", site.trust, "--json")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["chunks_checked"] == 4

    result = _offline(*installer, *site.args("install", victim), "--json")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["status"] == "installed"
    for rel, data in victim_files(b"one").items():
        assert (site.home / "current" / "models/tiny" / rel).read_bytes() == data
