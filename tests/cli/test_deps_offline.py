"""The real `gapship` command with networking cut: build --offline and install in a new network
namespace (`unshare -rn`), bootstrap gapship itself from a bundle, and (opt-in) a real cross-platform
download from the index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

from deps_testing import (
    GAPSHIP, HOST_PLATFORM, Wheelhouse, add_dependencies, clean_env, host_best_platform, offline, wheelhouse,
)
from gapship.bundler.deps.selfwheel import wheel_from_installed
from gapship.installer.deploy.deps import BOOTSTRAP_LOCK, parse_lock
from gapship.installer.formats.manifest import Manifest


@pytest.fixture(scope="session")
def house(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    return wheelhouse(tmp_path_factory)


def _gapship(*argv: str | Path, cut: bool = True) -> subprocess.CompletedProcess[str]:
    command = offline(GAPSHIP, *argv) if cut else [str(GAPSHIP), *(str(a) for a in argv)]
    return subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=300)


@pytest.mark.slow  # runs pip and creates a venv
def test_offline_build_and_install_without_network(tmp_path: Path, house: Wheelhouse, make_key, make_trust,
                                                    make_spec) -> None:
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements="gsdemo-pure\n", find_links=(house.wheels,))
    bundle, prefix = tmp_path / "bundle", tmp_path / "prefix"

    built = _gapship("build", spec, "--out", bundle, "--key", key.private, "--chunk-size", "4KiB", "--offline")
    assert built.returncode == 0, built.stderr
    done = _gapship("install", bundle, "--trust", make_trust(key), "--prefix", prefix, "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout)["venv"] == str(prefix / "demo" / "1.0.0" / "venv")

    python = prefix / "demo" / "current" / "venv" / "bin" / "python"
    code = "import gsdemo_pure, gsdemo_plat, sys; print(gsdemo_pure.VALUE, gsdemo_plat.VALUE, sys.prefix)"
    ran = subprocess.run(offline(python, "-c", code), capture_output=True, text=True)
    assert ran.stdout.split() == ["pure", "plat", str(prefix / "demo" / "current" / "venv")], ran.stderr

    # docs/sbom.md: the SBOM of real pip-frozen wheels is schema-valid, status lists them, and an
    # offline rebuild from the same find_links folder is byte-identical
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    sbom = _gapship("inspect", bundle, "--sbom")
    assert sbom.returncode == 0 and JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.stdout) is None
    status = json.loads(_gapship("status", "--prefix", prefix, "--json").stdout)
    listed = status["bundles"][0]["versions"][0]["packages"]
    assert sorted(p["name"] for p in listed) == ["gsdemo-plat", "gsdemo-pure"]
    rebuilt = _gapship("build", spec, "--check-against", bundle, "--offline", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr + rebuilt.stdout


def _wheels_of_gapships_dependencies(folder: Path) -> Path:
    """gapship's own dependencies as wheels, rebuilt from the test venv (so no index is needed)."""
    for name in ("click", "tqdm", "PyNaCl", "cffi", "pycparser", "packaging", "cryptography", "installer"):
        wheel_from_installed(name, folder, site=_site())
    return folder


def _site() -> Path:
    import click

    return Path(click.__file__).resolve().parents[1]


@pytest.mark.slow
def test_bootstrap_gapship_from_the_bundle_on_a_bare_python(tmp_path: Path, house: Wheelhouse, make_key, make_trust,
                                                            make_spec) -> None:
    """docs/dependencies.md, "Bootstrapping": the documented commands, run with networking cut."""
    key = make_key("release")
    links = _wheels_of_gapships_dependencies(tmp_path / "gapship-deps")
    # The rebuilt wheels carry the test venv's tags (PyNaCl's may need a recent glibc): target this host.
    spec = add_dependencies(make_spec(), requirements="gsdemo-pure\n", find_links=(house.wheels, links),
                            platforms=(host_best_platform(),))
    bundle = tmp_path / "bundle"
    built = _gapship("build", spec, "--out", bundle, "--key", key.private, "--chunk-size", "64KiB", "--offline",
                     "--include-gapship")
    assert built.returncode == 0, built.stderr
    manifest = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    assert "dependencies/wheels/gapship-0.1.0-py3-none-any.whl" in {f.path for f in manifest.files()}

    site = tmp_path / "site"
    site.mkdir()
    script = (
        f"cat {bundle}/chunks/*.bin | tar -x dependencies/ && "
        f"{sys.executable} -m venv gapship-venv && "
        "PIP_CONFIG_FILE=/dev/null gapship-venv/bin/pip install --isolated --no-index "
        "--find-links dependencies/wheels --require-hashes -r dependencies/gapship.lock && "
        f"gapship-venv/bin/gapship verify {bundle} --trust {make_trust(key)}"
    )
    ran = subprocess.run(offline("sh", "-c", script), cwd=site, capture_output=True, text=True,
                         env=clean_env(), timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "OK demo 1.0.0: signed by" in ran.stdout
    pins = {p.name for p in parse_lock((site / BOOTSTRAP_LOCK).read_bytes(), source=BOOTSTRAP_LOCK)}
    assert pins == {"gapship", "click", "tqdm", "pynacl", "cffi", "pycparser", "packaging", "cryptography", "installer"}


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("GAPSHIP_NETWORK_TESTS") != "1",
                    reason="set GAPSHIP_NETWORK_TESTS=1 to reach the index")
def test_downloads_a_real_package_set_for_another_architecture(tmp_path: Path, make_key, make_spec) -> None:
    """Cross-platform resolution against the real index: aarch64 wheels on an x86_64 build host (or the
    other way round), with a compiled package among them."""
    foreign = "manylinux2014_aarch64" if HOST_PLATFORM.endswith("x86_64") else "manylinux2014_x86_64"
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements="pynacl==1.5.0\npackaging==24.1\n", python="3.11",
                            platforms=(foreign,))
    bundle = tmp_path / "bundle"
    built = _gapship("build", spec, "--out", bundle, "--key", key.private, cut=False)
    assert built.returncode == 0, built.stderr
    manifest = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    wheels = sorted(f.path.rsplit("/", 1)[1] for f in manifest.files() if f.path.endswith(".whl"))
    assert sorted(str(parse_wheel_filename(w)[0]) for w in wheels) == ["cffi", "packaging", "pycparser", "pynacl"]
    arch = "aarch64" if "aarch64" in foreign else "x86_64"
    assert all(arch in w for w in wheels if not w.endswith("-none-any.whl"))
