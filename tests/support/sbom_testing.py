"""Small real wheels for the SBOM tests (docs/sbom.md): zips with a .dist-info/METADATA, as pip downloads
them, built in a tmp dir, and a FrozenDependencies over them (no pip, no index)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from gapship.bundler.deps.freeze import FrozenDependencies
from gapship.installer.deploy.deps import Target


def make_wheel(folder: Path, name: str, version: str, *, license_lines: str = "", requires: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{license_lines}" + \
               "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
        z.writestr(f"{name}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    return path


def three_wheels(folder: Path) -> FrozenDependencies:
    """alpha (an SPDX expression; requires beta, and gamma only below Python 3), beta (no license at
    all) and gamma (a license name that is not SPDX)."""
    wheels = [
        make_wheel(folder, "alpha", "1.2.0", license_lines="License-Expression: MIT OR Apache-2.0\n",
                   requires=("beta>=2", "gamma; python_version < '3.0'", "delta; extra == 'docs'")),
        make_wheel(folder, "beta", "2.0.1"),
        make_wheel(folder, "gamma", "0.1", license_lines="License: BSD License with a twist\n"),
    ]
    return FrozenDependencies(files=tuple((w, f"dependencies/wheels/{w.name}") for w in wheels),
                              target=Target("3.11", "cp", ("linux_x86_64",)), pins=(), bootstrap=())
