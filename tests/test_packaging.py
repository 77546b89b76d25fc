"""gapship installs as ``gapship.installer`` and ``gapship.bundler`` and never shadows, overwrites or
removes another distribution's top-level ``installer`` module: pypa's ``installer`` (a dependency of
poetry and others) is the concrete case.

How hermetic it is, and why:

* gapship's own wheel is built from a clean copy of this checkout by calling the PEP 517 backend that
  pyproject.toml declares, in the test environment: what ``pip wheel --no-build-isolation`` does, minus
  pip's second metadata pass (seconds saved). The ``test`` extra brings a setuptools with
  ``bdist_wheel``; no index, no pip config, no network.
* pypa's ``installer`` is not in the offline package sources of a typical CI or air-gapped host, and
  vendoring its wheel (with its bundled Windows launchers) into this repository would be worse. So the
  default test uses a stand-in: a real wheel of a distribution named ``installer`` with a top-level
  ``installer`` package, written in tmp_path. What can go wrong is a *name* clash (gapship shipping
  top-level ``installer/`` files would overwrite the stand-in's on install and delete them on
  uninstall), and the stand-in exposes exactly that.
* The same check with pypa's real wheel, downloaded with ``pip download installer``, runs when
  GAPSHIP_NETWORK_TESTS=1 (marked ``network``: it needs the package index).

Each check uses a fresh venv (no system site-packages) driven by this interpreter's pip
(``pip --python --isolated --no-index``), so nothing is installed into the test environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the repository root: tests/ sits right under it
STAND_IN_MARK = "stand-in for pypa/installer"
SKIP_WHEN_COPYING = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "tests",
                                           ".mypy_cache", ".pytest_cache", ".hypothesis", "demo-out")

pytestmark = pytest.mark.slow


def _pip(*args: str | Path, python: Path | None = None) -> subprocess.CompletedProcess[str]:
    """This interpreter's pip, ignoring pip config and PIP_* variables (--isolated)."""
    target = ["--python", str(python)] if python else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    done = subprocess.run([sys.executable, "-m", "pip", *target, *map(str, args), "--isolated",
                           "--disable-pip-version-check"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def gapship_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "gapship"
    shutil.copytree(ROOT, source, ignore=SKIP_WHEN_COPYING)  # a clean tree: no stale build/ in the wheel
    out = tmp_path_factory.mktemp("wheels")
    backend = tomllib.loads((source / "pyproject.toml").read_text())["build-system"]["build-backend"]
    hook = f"import {backend} as b, sys; print(b.build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-I", "-c", hook, str(out)], cwd=source, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out / done.stdout.splitlines()[-1]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _stand_in_wheel(folder: Path) -> Path:
    """A minimal but valid wheel (PEP 427) of a distribution named ``installer``."""
    files = {
        "installer/__init__.py": f'"""{STAND_IN_MARK}"""\n__version__ = "0.0.1"\n'.encode(),
        "installer/sources.py": b"class WheelFile:\n    pass\n",
        "installer-0.0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: installer\nVersion: 0.0.1\n",
        "installer-0.0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: gapship-tests\nRoot-Is-Purelib: true\n"
                                            b"Tag: py3-none-any\n",
    }
    record = [_record_line(name, data) for name, data in files.items()] + ["installer-0.0.1.dist-info/RECORD,,"]
    files["installer-0.0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / "installer-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return wheel


@pytest.fixture(params=["stand-in", pytest.param("pypa", marks=pytest.mark.network)])
def installer_wheel(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "stand-in":
        return _stand_in_wheel(tmp_path)
    _pip("download", "--no-deps", "--only-binary", ":all:", "-d", tmp_path, "installer")
    (wheel,) = tmp_path.glob("installer-*.whl")
    return wheel


PROBE = """
import importlib, importlib.metadata as md, json, pathlib
out = {}
try:
    mod = importlib.import_module("installer")
    owner = {str(f.locate().resolve()) for f in md.files("installer") or []}
    out["installer"] = {"file": mod.__file__, "owned_by_installer": str(pathlib.Path(mod.__file__).resolve()) in owner,
                        "doc": mod.__doc__ or "", "has_install": hasattr(importlib.import_module("installer"), "install")}
except ImportError as e:
    out["installer"] = {"error": str(e)}
try:
    mod = importlib.import_module("gapship.installer")
    out["gapship"] = {"file": mod.__file__, "top_level": sorted({f.parts[0] for f in md.files("gapship")})}
except ImportError as e:
    out["gapship"] = {"error": str(e)}
print(json.dumps(out))
"""


def _probe(python: Path) -> dict[str, dict[str, object]]:
    done = subprocess.run([str(python), "-I", "-c", PROBE], capture_output=True, text=True, check=True)
    result: dict[str, dict[str, object]] = json.loads(done.stdout)
    return result


def test_wheel_ships_only_the_gapship_package(gapship_wheel: Path) -> None:
    with zipfile.ZipFile(gapship_wheel) as z:
        top = {name.split("/")[0] for name in z.namelist()}
        entry_points = z.read("gapship-0.1.0.dist-info/entry_points.txt").decode()
    assert top == {"gapship", "gapship-0.1.0.dist-info"}
    assert "gapship = gapship.bundler.cli.main:main" in entry_points


def test_coexists_with_pypa_installer(gapship_wheel: Path, installer_wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with zipfile.ZipFile(installer_wheel) as z:
        pristine = z.read("installer/__init__.py")
    # One pip run for both: if gapship shipped top-level installer/ files, one wheel would overwrite
    # the other's, and the checks below (content, ownership, surviving gapship's uninstall) would see it.
    _pip("install", "--no-index", "--no-deps", installer_wheel, gapship_wheel, python=python)

    found = _probe(python)
    theirs, ours = found["installer"], found["gapship"]
    assert theirs["file"] == str(Path(site) / "installer" / "__init__.py"), found
    assert theirs["owned_by_installer"] is True
    if installer_wheel.name.startswith("installer-0.0.1"):
        assert STAND_IN_MARK in str(theirs["doc"])
    else:
        assert theirs["has_install"] is True  # pypa's: `from installer import install`
    assert ours["file"] == str(Path(site) / "gapship" / "installer" / "__init__.py"), found
    assert "installer" not in ours["top_level"] and "bundler" not in ours["top_level"]
    assert (Path(site) / "installer" / "__init__.py").read_bytes() == pristine

    _pip("uninstall", "--yes", "gapship", python=python)
    found = _probe(python)
    assert found["installer"].get("owned_by_installer") is True, found
    assert "error" in found["gapship"]
    assert (Path(site) / "installer" / "__init__.py").read_bytes() == pristine
