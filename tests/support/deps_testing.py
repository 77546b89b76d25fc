"""Helpers for the dependency tests: small wheels and an sdist of our own, built once per session.

The wheels are built with real ``pip wheel`` (setuptools and wheel from the test venv, no index) and
retagged with ``python -m wheel tags`` to carry a platform tag. Every pip run here gets ``--isolated``
and ``PIP_CONFIG_FILE=/dev/null`` so the build host's pip configuration cannot leak in.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tarfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
CP = f"cp{sys.version_info[0]}{sys.version_info[1]}"
ARCH = platform.machine()
FOREIGN_ARCH = "aarch64" if ARCH == "x86_64" else "x86_64"
HOST_PLATFORM = f"manylinux_2_17_{ARCH}"
FOREIGN_PLATFORM = f"manylinux_2_17_{FOREIGN_ARCH}"
GAPSHIP = Path(sys.executable).parent / "gapship"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env.update(extra)
    return env


def host_best_platform() -> str:
    """The newest manylinux tag this host accepts (pip takes older manylinux wheels for it too)."""
    from packaging import tags

    return next(t.platform for t in tags.sys_tags() if t.platform.startswith("manylinux_"))


def host_supported() -> str | None:
    """Why these tests cannot run here, or None."""
    from packaging import tags

    if sys.platform != "linux" or ARCH not in ("x86_64", "aarch64"):
        return f"needs Linux on x86_64 or aarch64, not {sys.platform} {ARCH}"
    if sys.implementation.name != "cpython":
        return "needs CPython"
    if not any(t.platform == HOST_PLATFORM for t in tags.sys_tags()):
        return f"this host does not accept {HOST_PLATFORM} wheels"
    return None


@dataclass(frozen=True)
class Wheelhouse:
    wheels: Path  # gsdemo-pure (py3-none-any, needs gsdemo-plat) and gsdemo-plat for two platforms
    sdists: Path  # gsdemo-src, an sdist only; its build backend writes `marker` when it runs
    marker: Path

    @property
    def pure(self) -> Path:
        return self.wheels / "gsdemo_pure-1.0-py3-none-any.whl"

    def plat(self, platform_tag: str = HOST_PLATFORM) -> Path:
        return self.wheels / f"gsdemo_plat-1.0-{CP}-{CP}-{platform_tag}.whl"


_CACHE: dict[str, Wheelhouse] = {}


def wheelhouse(factory: pytest.TempPathFactory) -> Wheelhouse:
    """Built once per test session (shared by every module that asks)."""
    if "house" not in _CACHE:
        reason = host_supported()
        if reason:
            pytest.skip(reason)
        _CACHE["house"] = _build(factory.mktemp("wheelhouse"))
    return _CACHE["house"]


def _build(root: Path) -> Wheelhouse:
    wheels, sdists = root / "wheels", root / "sdists"
    sources = root / "src"
    _project(sources / "pure", "gsdemo-pure", "gsdemo_pure", 'VALUE = "pure"\n', deps='"gsdemo-plat==1.0"')
    _project(sources / "plat", "gsdemo-plat", "gsdemo_plat", 'VALUE = "plat"\n', deps="")
    procs = [subprocess.Popen([sys.executable, "-m", "pip", "wheel", "--isolated", "--no-deps", "--no-index",
                               "--no-build-isolation", "-q", "-w", str(root / "built"), str(sources / name)],
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name in ("pure", "plat")]
    for proc in procs:
        out, _ = proc.communicate()
        assert proc.returncode == 0, out.decode()
    wheels.mkdir()
    shutil.copy(root / "built" / "gsdemo_pure-1.0-py3-none-any.whl", wheels)
    for tag in (HOST_PLATFORM, FOREIGN_PLATFORM):
        retag(root / "built" / "gsdemo_plat-1.0-py3-none-any.whl", wheels, python=CP, abi=CP, platform_tag=tag)
    marker = root / "sdist-build-ran"
    sdists.mkdir()
    make_sdist(sdists, "gsdemo_src", "1.0", marker)
    return Wheelhouse(wheels=wheels, sdists=sdists, marker=marker)


def _project(folder: Path, dist: str, package: str, code: str, *, deps: str) -> None:
    (folder / "src" / package).mkdir(parents=True)
    (folder / "src" / package / "__init__.py").write_text(code)
    (folder / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.0"
        dependencies = [{deps}]
        """))


def retag(wheel: Path, out: Path, *, python: str, abi: str, platform_tag: str) -> Path:
    """A copy of ``wheel`` with new tags, made by `python -m wheel tags` (the WHEEL file and name)."""
    work = out / f".retag-{platform_tag}"
    work.mkdir()
    shutil.copy(wheel, work)
    done = subprocess.run([sys.executable, "-m", "wheel", "tags", "--python-tag", python, "--abi-tag", abi,
                           "--platform-tag", platform_tag, "--remove", str(work / wheel.name)],
                          capture_output=True, text=True, env=clean_env())
    assert done.returncode == 0, done.stderr
    (made,) = work.glob("*.whl")
    target = out / made.name
    made.rename(target)
    work.rmdir()
    return target


# An in-tree PEP 517 backend (no build requirements, so it builds offline): it writes a pure wheel and
# records that it ran, which lets a test prove that no build code ran when gapship refused an sdist.
_BACKEND = '''
import base64, hashlib, zipfile
NAME, VERSION, MARKER = {name!r}, {version!r}, {marker!r}

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open(MARKER, "a") as f:
        f.write("built\\n")
    info = f"{{NAME}}-{{VERSION}}.dist-info"
    files = {{
        f"{{NAME}}/__init__.py": b"VALUE = 'built from sdist'\\n",
        f"{{info}}/METADATA": f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n".encode(),
        f"{{info}}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    record = []
    filename = f"{{NAME}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(f"{{wheel_directory}}/{{filename}}", "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{{path}},sha256={{digest}},{{len(data)}}")
        record.append(f"{{info}}/RECORD,,")
        zf.writestr(f"{{info}}/RECORD", "\\n".join(record) + "\\n")
    return filename
'''


def make_sdist(out: Path, name: str, version: str, marker: Path) -> Path:
    base = out / f".{name}-{version}"
    src = base / f"{name}-{version}"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    (src / "backend.py").write_text(_BACKEND.format(name=name, version=version, marker=str(marker)))
    (src / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    target = out / f"{name}-{version}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    shutil.rmtree(base)
    return target


def add_dependencies(spec: Path, *, requirements: str | None, python: str = PY,
                     platforms: tuple[str, ...] = (HOST_PLATFORM,), find_links: tuple[Path, ...] = (),
                     extra: str = "", requirements_name: str = "requirements.txt") -> Path:
    """Append a [dependencies] table to a spec written by the make_spec fixture."""
    if requirements is not None:
        (spec.parent / requirements_name).write_text(requirements)
    links = ", ".join(f'"{p}"' for p in find_links)
    plats = ", ".join(f'"{p}"' for p in platforms)
    with spec.open("a") as f:
        f.write(f'\n[dependencies]\nrequirements = "{requirements_name}"\npython = "{python}"\n'
                f"platforms = [{plats}]\nfind_links = [{links}]\n{extra}")
    return spec


def unshare_available() -> str | None:
    """Why a new network namespace cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    done = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"the kernel refuses a new network namespace: {done.stderr.strip()}"
    return None


def offline(*argv: str | Path) -> list[str]:
    """A command line that runs ``argv`` with networking cut (a new, empty network namespace)."""
    reason = unshare_available()
    if reason:
        pytest.skip(reason)
    return ["unshare", "-rn", *(str(a) for a in argv)]


def write_spec(base: Path, *, version: str = "1.0.0") -> Path:
    """What the make_spec fixture writes, for module-scoped fixtures that cannot use it."""
    from gapship_testing import POLICY

    (base / "model").mkdir(parents=True)
    (base / "model" / "config.json").write_bytes(b'{"hidden": 4}\n')
    (base / "policy.toml").write_bytes(POLICY)
    spec = base / "spec.toml"
    spec.write_text(f'[bundle]\nname = "demo"\nversion = "{version}"\n\n[[model]]\nname = "tiny"\nsource = "model"\n\n'
                    '[safeguards]\nsource = "policy.toml"\n')
    return spec


def build_cli(spec: Path, out: Path, key: Path, *extra: str) -> None:
    """`gapship build --offline` in-process; the bundle must build."""
    from gapship_testing import run

    result = run("build", spec, "--out", out, "--key", key, "--chunk-size", "4KiB", "--offline", *extra)
    assert result.exit_code == 0, result.output
