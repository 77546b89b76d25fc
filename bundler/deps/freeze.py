"""Freezing a spec's ``[dependencies]`` into wheels for the target (docs/dependencies.md).

pip does the resolving and downloading, for the *target* interpreter and platform, not the build
host's: ``pip download --only-binary=:all: --platform ... --python-version ... --implementation ...``.
The result is the ``dependencies`` component (its layout is in :mod:`gapship.installer.deploy.deps`): the
wheels, a ``--require-hashes`` lock over them, and ``target.json``.

What pip may use is decided by the spec alone. Every pip run gets ``--isolated`` and the environment of
:func:`~gapship.installer.deploy.deps.pip_env` (no ``PIP_*`` variable, no config file at all), because a
build host's pip config commonly adds an index, find-links or constraints, and a bundle must not
depend on what happened to be configured where it was built. ``--offline`` means ``--no-index`` and
the spec's ``find_links`` folders only.

Source distributions are refused with a message naming the package: the site has no compiler and
gapship never builds anything there. With ``build_sdists_on_build_host = true`` the bundler instead
builds such a package into a wheel on the build host (running its build code here) and keeps it only
if the wheel fits the target.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidSdistFilename, InvalidWheelFilename, canonicalize_name, parse_sdist_filename, parse_wheel_filename,
)

from ...installer.deploy.deps import BOOTSTRAP_LOCK, LOCK, TARGET, WHEELS, Pin, Target, pip_env, render_lock
from ...installer.errors import HostError, UsageError
from ...installer.kit import open_regular, read_bounded, refuse_as
from .pylock import is_pylock, pylock_requirements
from .selfwheel import wheel_from_installed
from ..spec import DependencySpec

DEFAULT_INDEX = "https://pypi.org/simple"
MAX_REQUIREMENTS_BYTES = 16 * 1024 * 1024  # a requirements file of thousands of hashed pins is under 1 MiB
MAX_SDIST_BUILDS = 32  # each build is one more resolution round; a real set needs a handful at most

_UNSATISFIED_RE = re.compile(r"Could not find a version that satisfies the requirement (\S+)")
_SKIPPED_SDIST_RE = re.compile(r"Skipping link: No sources permitted for [^:]+: (\S+)")
_FIRST_WORD_RE = re.compile(r"[^\s;]+")
_HASH_OPTIONS_RE = re.compile(r"--hash[=\s]+\S+(\s+--hash[=\s]+\S+)*\s*")
_HASH_MISMATCH_RE = re.compile(r"DO NOT MATCH THE HASHES[^\n]*\n\s+(\S+) from (\S+?):?(?=\s)")


@dataclass(frozen=True)
class FrozenDependencies:
    """The component's files, ready to be bundled: ``files`` pairs a local file with its bundle path,
    in payload order (the small files first, so the installer reads them from the fewest chunks)."""

    files: tuple[tuple[Path, str], ...]
    target: Target
    pins: tuple[Pin, ...]
    bootstrap: tuple[Pin, ...]

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path, _ in self.files)


@contextmanager
def frozen_dependencies(spec: DependencySpec | None, *, offline: bool, include_gapship: bool,
                        work_dir: Path) -> Iterator[FrozenDependencies | None]:
    """Freeze ``spec`` into a private folder under ``work_dir`` that lives as long as the context."""
    if spec is None:
        if include_gapship:
            raise UsageError("--include-gapship needs a [dependencies] table in the spec (it names the target "
                             "Python and platforms)")
        yield None
        return
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=".gapship-deps-", dir=work_dir))
    except OSError as e:
        raise HostError(f"cannot create a work folder in {work_dir}: {e.strerror}", subject=str(work_dir)) from None
    try:
        yield freeze(spec, root, offline=offline, include_gapship=include_gapship)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def freeze(spec: DependencySpec, root: Path, *, offline: bool, include_gapship: bool) -> FrozenDependencies:
    """Download (or build, if allowed) every wheel into ``root`` and write the lock(s) and target.json."""
    target = Target(spec.python, spec.implementation, spec.platforms, bootstrap=include_gapship)
    pip = _Pip(spec, root, offline=offline)
    requirements, no_deps = _requirements_input(spec, root, pip)
    wheels = pip.download(requirements, no_deps=no_deps, dest=root / "app")
    pins = _pins(wheels)
    boot_wheels: list[Path] = []
    if include_gapship:
        own = wheel_from_installed("gapship", root / "self")
        boot_wheels = pip.download_wheel(own, dest=root / "bootstrap")
    out = root / "out"
    files = [
        (_write(out / TARGET, target.to_bytes()), TARGET),
        (_write(out / LOCK, render_lock(pins, _lock_header(spec, "requirements.lock"))), LOCK),
    ]
    bootstrap = _pins(boot_wheels)
    if include_gapship:
        files.append((_write(out / BOOTSTRAP_LOCK, render_lock(bootstrap, _lock_header(spec, "gapship.lock"))),
                      BOOTSTRAP_LOCK))
    files.extend(_merge_wheels(wheels + boot_wheels, out / WHEELS))
    return FrozenDependencies(files=tuple(files), target=target, pins=pins, bootstrap=bootstrap)


def _lock_header(spec: DependencySpec, name: str) -> list[str]:
    return [
        f"gapship {name}: every wheel pinned by sha256 (pip's --require-hashes form).",
        f"Target: {_describe(spec)}.",
        f"Installed offline with: pip install --isolated --no-index --find-links wheels --require-hashes -r {name}",
    ]


def _describe(spec: DependencySpec) -> str:
    impl = {"cp": "CPython", "pp": "PyPy"}.get(spec.implementation, spec.implementation)
    return f"{impl} {spec.python} on {', '.join(spec.platforms)}"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _pins(wheels: Sequence[Path]) -> tuple[Pin, ...]:
    """One pin per wheel; name and version come from the wheel's file name (PEP 427)."""
    pins = []
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        pins.append(Pin(str(name), str(version), (_sha256(wheel),)))
    if len({p.name for p in pins}) != len(pins):
        raise UsageError(f"pip returned two wheels of one package: {', '.join(w.name for w in wheels)}")
    return tuple(sorted(pins, key=lambda p: p.name))


def _sha256(path: Path) -> str:
    """A wheel's hash, streamed; opened by the kit, so a FIFO in pip's output is refused, not waited on."""
    fd, _ = open_regular(path, refuse=refuse_as(UsageError, "cannot read wheel {path}: {why}"))
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _merge_wheels(wheels: Sequence[Path], folder: Path) -> list[tuple[Path, str]]:
    """The application's and gapship's wheels share one folder; a name seen twice must be one file."""
    folder.mkdir(parents=True, exist_ok=True)
    placed: dict[str, str] = {}
    for wheel in wheels:
        digest = _sha256(wheel)
        if wheel.name in placed:
            if placed[wheel.name] != digest:
                raise UsageError(f"two different files are both named {wheel.name}", subject=wheel.name)
            continue
        placed[wheel.name] = digest
        os.replace(wheel, folder / wheel.name)
    return [(folder / name, f"{WHEELS}{name}") for name in sorted(placed)]


# -- the requirements the user gave -------------------------------------------------------------------


def _requirements_input(spec: DependencySpec, root: Path, pip: _Pip) -> tuple[Path, bool]:
    """The requirements file for pip, and whether pip must skip resolving (a pylock is already resolved)."""
    if not spec.requirements.is_file():
        raise UsageError(f"dependencies.requirements {spec.requirements} does not exist or is not a file",
                         subject=str(spec.requirements))
    if is_pylock(spec.requirements):
        text, folders = pylock_requirements(spec.requirements, spec)
        pip.find_links.extend(folders)
        return _write(root / "pylock-requirements.txt", text.encode("utf-8")), True
    check_requirements_file(spec.requirements, offline=pip.offline)
    return spec.requirements, False


def check_requirements_file(path: Path, *, offline: bool) -> None:
    """Accept requirement lines only, each optionally with ``--hash``: sources come from the spec, and
    pip must never be handed a source tree, an sdist or a VCS URL directly (it would run their build
    code to read metadata), nor, with ``--offline``, a URL (``--no-index`` does not stop those)."""
    data = read_bounded(path, cap=MAX_REQUIREMENTS_BYTES, follow_symlinks=True,
                        refuse=lambda r: UsageError(f"cannot read {path}: {r.oserror or r.strerror}", subject=str(path)))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"cannot read {path}: {e}", subject=str(path)) from None
    count = 0
    for number, line in _requirement_lines(text):
        where = f"{path.name} line {number}"
        if line.startswith("-"):
            option = _FIRST_WORD_RE.match(line)
            raise UsageError(
                f"{where}: option {option[0] if option else line!r} is not allowed; sources come from the spec's "
                f"[dependencies] (find_links, index_url) and nested files are not read", subject=str(path),
            )
        requirement, _, options = line.partition(" --")
        requirement = requirement.strip()
        if options and not _HASH_OPTIONS_RE.fullmatch(f"--{options}"):
            raise UsageError(f"{where}: only --hash may follow a requirement", subject=str(path))
        try:
            req = Requirement(requirement)
        except InvalidRequirement:
            raise UsageError(f"{where}: {requirement!r} is not a requirement (a bare path or URL is not allowed: "
                             f"write 'name @ URL' to a .whl, or name==version)", subject=str(path)) from None
        if req.url is not None and not urllib.parse.urlsplit(req.url).path.endswith(".whl"):
            raise UsageError(
                f"{where}: {req.name} points at a source tree, sdist or VCS URL ({req.url}); the site cannot "
                f"compile it: point at a wheel built for the target instead", subject=req.name,
            )
        if offline and req.url is not None and not req.url.startswith("file:"):
            raise UsageError(f"{where}: {req.name} @ {req.url} would be downloaded, but the build is --offline",
                             subject=req.name)
        count += 1
    if count == 0:
        raise UsageError(f"{path} names no requirement", subject=str(path))


def _requirement_lines(text: str) -> Iterator[tuple[int, str]]:
    """pip's requirements-file lines: continuations joined, comments and blank lines dropped."""
    start, parts = 0, list[str]()
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw)
        start = start if parts else number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        joined = " ".join(p.strip() for p in parts).strip()
        parts = []
        if joined:
            yield start, joined


# -- running pip ----------------------------------------------------------------------------------------


class _Pip:
    """pip download for the target, with the spec's sources and nothing else."""

    def __init__(self, spec: DependencySpec, root: Path, *, offline: bool) -> None:
        self.spec = spec
        self.root = root
        self.offline = offline
        self.find_links: list[Path] = []
        for folder in spec.find_links:
            if not folder.is_dir():
                raise UsageError(f"dependencies.find_links folder {folder} does not exist", subject=str(folder))
            self.find_links.append(folder.resolve())
        if offline and not self.find_links:
            raise UsageError("--offline needs at least one dependencies.find_links folder to take wheels from")
        self.built = root / "built"  # wheels built from sdists, with the opt-in
        self.runs = 0

    def sources(self) -> list[str]:
        index = ["--no-index"] if self.offline else ["--index-url", self.spec.index_url or DEFAULT_INDEX]
        links = [*self.find_links, *([self.built] if self.built.is_dir() else [])]
        return [*index, *(arg for folder in links for arg in ("--find-links", str(folder)))]

    def target_options(self) -> list[str]:
        platforms = [arg for tag in expand_platforms(self.spec.platforms) for arg in ("--platform", tag)]
        return ["--only-binary=:all:", "--python-version", self.spec.python,
                "--implementation", self.spec.implementation, *platforms]

    def download(self, requirements: Path, *, no_deps: bool, dest: Path) -> list[Path]:
        """Resolve and download; with the opt-in, build sdist-only packages and try again."""
        built: set[str] = set()
        while True:
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            extra = ["--no-deps"] if no_deps else []
            ok, output, log = self._run(["download", *self.target_options(), *extra, "-d", str(dest),
                                         "-r", str(requirements)])
            if ok:
                return _wheels_in(dest)
            name, requirement, sdist = self._explain(output, log)
            if sdist is None or not self.spec.build_sdists_on_build_host or name in built \
                    or len(built) >= MAX_SDIST_BUILDS:
                raise self._refusal(name, requirement, sdist, output, built=name in built)
            self._build_sdist(name, requirement)
            built.add(name)

    def download_wheel(self, wheel: Path, *, dest: Path) -> list[Path]:
        """One local wheel (gapship's own) and its dependencies for the target."""
        dest.mkdir(parents=True)
        ok, output, _ = self._run(["download", *self.target_options(), "-d", str(dest), str(wheel)])
        if not ok:
            raise UsageError(f"cannot gather gapship's own dependencies for {_describe(self.spec)}: "
                             f"{_last_error(output)}", subject="--include-gapship",
                             hint="with --offline, put wheels of click, tqdm, PyNaCl, cryptography, packaging, installer "
                                  "(and their dependencies) for the target into find_links")
        return _wheels_in(dest)

    def _build_sdist(self, name: str, requirement: str) -> None:
        self.built.mkdir(exist_ok=True)
        ok, output, _ = self._run(["wheel", "--no-deps", "--no-binary", name, "-w", str(self.built), requirement])
        if not ok:
            raise UsageError(f"cannot build {requirement} from its sdist on the build host: {_last_error(output)}",
                             subject=name)

    def _run(self, command: list[str]) -> tuple[bool, str, Path]:
        self.runs += 1
        log = self.root / f"pip-{self.runs}.log"
        argv = [sys.executable, "-I", "-m", "pip", command[0], "--isolated", "--no-input",
                "--disable-pip-version-check", "--progress-bar", "off", "--log", str(log),
                *self.sources(), *command[1:]]
        try:
            done = subprocess.run(argv, env=pip_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace", check=False)
        except OSError as e:
            raise HostError(f"cannot run pip: {e.strerror}", subject=sys.executable) from None
        if "No module named pip" in done.stdout:
            raise HostError(f"pip is not installed for {sys.executable}; gapship needs it to freeze dependencies",
                            subject=sys.executable)
        return done.returncode == 0, done.stdout, log

    def _explain(self, output: str, log: Path) -> tuple[str, str, str | None]:
        """Which requirement pip could not satisfy, and the sdist it skipped for it, if any."""
        mismatch = _HASH_MISMATCH_RE.search(output)
        if mismatch is not None:
            raise UsageError(f"{mismatch[1]} ({mismatch[2].rsplit('/', 1)[-1]}) matches no hash that "
                             f"{self.spec.requirements.name} lists for it", subject=mismatch[1])
        match = _UNSATISFIED_RE.search(output)
        if match is None:
            raise UsageError(f"pip could not download the dependencies for {_describe(self.spec)}: "
                             f"{_last_error(output)}", subject=str(self.spec.requirements))
        requirement = match[1]
        try:
            name = str(canonicalize_name(Requirement(requirement).name))
        except InvalidRequirement:
            name = str(canonicalize_name(re.split(r"[\[<>=!~;@ ]", requirement, maxsplit=1)[0]))
        return name, requirement, _skipped_sdist(log, name)

    def _refusal(self, name: str, requirement: str, sdist: str | None, output: str, *, built: bool) -> UsageError:
        target = _describe(self.spec)
        if sdist is None:
            return UsageError(f"no wheel of {requirement} for {target}: {_last_error(output)}", subject=name)
        if built:
            made = ", ".join(p.name for p in sorted(self.built.glob("*.whl")))
            return UsageError(f"{name} was built from {sdist} on the build host, but the wheel ({made}) does not fit "
                              f"{target}", subject=name, hint="build a wheel for the target platform yourself and "
                              "put it in find_links")
        return UsageError(
            f"{name} is available only as a source distribution ({sdist}) for {target}; the site cannot compile it",
            subject=name,
            hint="put a wheel built for the target in find_links, or set build_sdists_on_build_host = true in "
                 "[dependencies] to build it here (this runs its build code on the build host)",
        )


_MANYLINUX_RE = re.compile(r"manylinux_(\d+)_(\d+)_(\w+)")
_MUSLLINUX_RE = re.compile(r"musllinux_(\d+)_(\d+)_(\w+)")
_LEGACY_MANYLINUX = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}


def expand_platforms(platforms: Sequence[str]) -> list[str]:
    """A glibc or musl target also runs wheels built for older ones (PEP 600, PEP 656), but pip
    (before 24) matches ``--platform`` tags literally: list every older tag too, in preference order,
    so that ``manylinux_2_28_x86_64`` in the spec means "runs on glibc 2.28", as it does on the site."""
    out: list[str] = []
    for tag in platforms:
        out.append(tag)
        if m := _MANYLINUX_RE.fullmatch(tag):
            major, minor, arch = int(m[1]), int(m[2]), m[3]
            for older in range(minor - 1, 4, -1):
                out.append(f"manylinux_{major}_{older}_{arch}")
            out.extend(f"{legacy}_{arch}" for (ma, mi), legacy in _LEGACY_MANYLINUX.items()
                       if (ma, mi) <= (major, minor))
        elif m := _MUSLLINUX_RE.fullmatch(tag):
            out.extend(f"musllinux_{m[1]}_{older}_{m[3]}" for older in range(int(m[2]) - 1, -1, -1))
    return list(dict.fromkeys(out))


def _skipped_sdist(log: Path, name: str) -> str | None:
    """pip logs (at debug level, in --log) each sdist that --only-binary=:all: made it skip."""
    try:  # pip's own log, in the build's private folder: read a line at a time, not whole (it can be large)
        with log.open(encoding="utf-8", errors="replace") as f:
            return next((found for line in f if (found := _skipped_in(line, name))), None)
    except OSError:
        return None


def _skipped_in(line: str, name: str) -> str | None:
    """The sdist file name in one pip log line, if it is one skipped for project ``name``."""
    match = _SKIPPED_SDIST_RE.search(line)
    if match is None:
        return None
    filename = urllib.parse.unquote(urllib.parse.urlsplit(match[1]).path.rsplit("/", 1)[-1])
    try:
        project = parse_sdist_filename(filename)[0]
    except InvalidSdistFilename:
        return None
    return filename if str(project) == name else None


def _wheels_in(folder: Path) -> list[Path]:
    """Everything pip left must be a wheel: anything else is refused, never bundled."""
    out = []
    for path in sorted(folder.iterdir()):
        try:
            parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            raise UsageError(f"pip produced {path.name}, which is not a wheel; only wheels can be bundled",
                             subject=path.name) from None
        out.append(path)
    return out


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip printed nothing"])[-1][:500]
