"""Reading a PEP 751 ``pylock.toml`` as the input of ``[dependencies]`` (docs/dependencies.md).

A pylock file is already resolved, so gapship does not resolve again: it evaluates each package's
marker for the *target* (python version and platform from the spec, not the build host), and hands pip
one ``name==version`` line per selected package with every hash the lock lists for its wheels, under
``--no-deps``. pip then picks the wheel that fits the target and refuses any file whose hash the lock
does not list. Packages the lock offers only as an sdist, a source tree, a VCS checkout or an archive
are refused, naming the package (the opt-in to build sdists applies to requirements.txt only: a wheel
built here could never match a hash in the lock).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ...installer.errors import UsageError
from ...installer.kit import parse_toml, read_bounded
from ..spec import DependencySpec

MAX_LOCK_BYTES = 64 * 1024 * 1024  # a lock of thousands of packages, with every hash, is a few MiB
_PYLOCK_NAME_RE = re.compile(r"pylock\.([^.]+\.)?toml")
_PIP_HASHES = ("sha256", "sha384", "sha512")
_SOURCE_KEYS = ("sdist", "vcs", "directory", "archive")


def is_pylock(path: Path) -> bool:
    """PEP 751 names: ``pylock.toml`` or ``pylock.<name>.toml``."""
    return _PYLOCK_NAME_RE.fullmatch(path.name) is not None


def target_environment(spec: DependencySpec) -> dict[str, str]:
    """PEP 508 marker values for the target, derived from the spec's Python and first platform tag.
    Only the patch level is unknown: ``python_full_version`` is taken as ``X.Y.0``."""
    platform = spec.platforms[0]
    if platform.startswith(("manylinux", "musllinux", "linux")):
        system = ("linux", "posix", "Linux")
    elif platform.startswith("macosx"):
        system = ("darwin", "posix", "Darwin")
    elif platform.startswith("win"):
        system = ("win32", "nt", "Windows")
    else:
        raise UsageError(f"cannot tell the operating system of platform tag {platform!r} to evaluate pylock markers")
    machine = re.sub(r"^(manylinux_\d+_\d+|manylinux\d+|musllinux_\d+_\d+|linux|macosx_\d+_\d+|win)_", "", platform)
    machine = {"amd64": "AMD64", "arm64": "ARM64" if system[0] == "win32" else "arm64"}.get(machine, machine)
    impl = {"cp": ("cpython", "CPython"), "pp": ("pypy", "PyPy")}[spec.implementation]
    return {
        "python_version": spec.python, "python_full_version": f"{spec.python}.0",
        "implementation_name": impl[0], "implementation_version": f"{spec.python}.0",
        "platform_python_implementation": impl[1], "sys_platform": system[0], "os_name": system[1],
        "platform_system": system[2], "platform_machine": machine, "platform_release": "", "platform_version": "",
    }


def pylock_requirements(path: Path, spec: DependencySpec) -> tuple[str, list[Path]]:
    """The requirements text for pip, and the folders of wheels the lock gives by local ``path``."""
    lock = _load(path)
    env = target_environment(spec)
    groups = frozenset(_str_list(lock.get("default-groups", []), "default-groups", path))
    _check_lock_applies(lock, env, spec, path)
    lines, folders = [], []
    for i, package in enumerate(_packages(lock, path)):
        where = f"{path.name} packages[{i}]"
        name = package.get("name")
        if not isinstance(name, str):
            raise UsageError(f"{where} has no name")
        if "marker" in package and not _applies(package["marker"], env, groups, where):
            continue
        line, local = _pin(package, str(canonicalize_name(name)), spec, path, where)
        lines.append(line)
        folders.extend(local)
    if not lines:
        raise UsageError(f"{path} selects no package for {spec.python} on {spec.platforms[0]}", subject=str(path))
    return "\n".join(lines) + "\n", sorted(set(folders))


def _load(path: Path) -> Mapping[str, Any]:
    data = read_bounded(path, cap=MAX_LOCK_BYTES, follow_symlinks=True,
                        refuse=lambda r: UsageError(f"cannot read {path}: {r.oserror or r.strerror}", subject=str(path)))
    lock = parse_toml(data, source=str(path), error=UsageError, invalid="cannot read {source}: {detail}")
    version = lock.get("lock-version")
    if not isinstance(version, str) or not version.startswith("1."):
        raise UsageError(f"{path}: lock-version {version!r} is not a PEP 751 version 1.x", subject=str(path))
    return lock


def _packages(lock: Mapping[str, Any], path: Path) -> list[Mapping[str, Any]]:
    packages = lock.get("packages")
    if not isinstance(packages, list) or not all(isinstance(p, dict) for p in packages):
        raise UsageError(f"{path}: [[packages]] is missing or malformed", subject=str(path))
    return packages


def _check_lock_applies(lock: Mapping[str, Any], env: dict[str, str], spec: DependencySpec, path: Path) -> None:
    requires = lock.get("requires-python")
    if isinstance(requires, str) and not _python_fits(requires, spec.python, f"{path.name} requires-python"):
        raise UsageError(f"{path} requires Python {requires}, not {spec.python}", subject=str(path))
    environments = lock.get("environments")
    if environments is not None:
        markers = _str_list(environments, "environments", path)
        if not any(_applies(m, env, frozenset(), f"{path.name} environments") for m in markers):
            raise UsageError(f"{path} is locked for other environments than {spec.python} on {spec.platforms[0]}",
                             subject=str(path))


def _pin(package: Mapping[str, Any], name: str, spec: DependencySpec, path: Path,
         where: str) -> tuple[str, list[Path]]:
    version = package.get("version")
    wheels = package.get("wheels")
    if not wheels:
        kind = next((k for k in _SOURCE_KEYS if k in package), "no wheel")
        raise UsageError(f"{name} is locked only as {kind} in {path.name}; the site cannot compile it",
                         subject=name, hint="lock a wheel built for the target instead")
    if not isinstance(version, str):
        raise UsageError(f"{where} ({name}) has no version; gapship pins every package")
    requires = package.get("requires-python")
    if isinstance(requires, str) and not _python_fits(requires, spec.python, where):
        raise UsageError(f"{name} {version} requires Python {requires}, not {spec.python}", subject=name)
    hashes, folders = [], []
    for wheel in wheels if isinstance(wheels, list) else []:
        table = wheel.get("hashes") if isinstance(wheel, dict) else None
        if not isinstance(table, dict):
            raise UsageError(f"{where} ({name}): a wheel has no hashes table")
        hashes += [f"--hash={alg}:{table[alg]}" for alg in _PIP_HASHES if isinstance(table.get(alg), str)]
        local = wheel.get("path")
        if isinstance(local, str):
            folders.append((path.parent / local).resolve().parent)
    if not hashes:
        raise UsageError(f"{where} ({name}): no sha256/sha384/sha512 hash for any wheel")
    try:
        Version(version)
    except InvalidVersion:
        raise UsageError(f"{where} ({name}): version {version!r} is not PEP 440") from None
    return f"{name}=={version} " + " ".join(hashes), folders


def _applies(marker: object, env: dict[str, str], groups: frozenset[str], where: str) -> bool:
    if not isinstance(marker, str):
        raise UsageError(f"{where}: marker must be a string")
    full: dict[str, str | frozenset[str]] = {**env, "extras": frozenset(), "dependency_groups": groups}
    try:
        parsed = Marker(marker)
        try:
            return parsed.evaluate(full, "lock_file")
        except TypeError:  # packaging < 25 knows no "lock_file" context: no extras, no groups
            return parsed.evaluate({**env, "extra": ""})
    except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName) as e:
        raise UsageError(f"{where}: cannot evaluate marker {marker!r} for the target: {e}") from None


def _python_fits(requires: str, python: str, where: str) -> bool:
    try:
        return SpecifierSet(requires).contains(f"{python}.0", prereleases=True) or \
            SpecifierSet(requires).contains(f"{python}.99", prereleases=True)
    except InvalidSpecifier:
        raise UsageError(f"{where}: {requires!r} is not a version specifier") from None


def _str_list(raw: object, what: str, path: Path) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise UsageError(f"{path}: {what} must be a list of strings", subject=str(path))
    return raw
