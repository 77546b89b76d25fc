"""Installing a bundle's Python dependencies into a venv, offline (docs/dependencies.md).

The ``dependencies`` component (docs/format.md, "Components") holds:

- ``dependencies/target.json``: the interpreter and platforms the wheels were chosen for;
- ``dependencies/requirements.lock``: every wheel to install, pinned by name, version and sha256
  (pip's ``--require-hashes`` form);
- ``dependencies/gapship.lock``: optional, the wheels that bootstrap gapship itself (``--include-gapship``);
- ``dependencies/wheels/*.whl``: the wheels, each also listed with its hash in the signed manifest.

Order of work, so that nothing is written before the host is known to fit and nothing from the bundle
runs before verification has finished (the security guide's "Faults on the host"; docs/security-report.md):

1. :func:`plan_dependencies`, before anything is written: checks the component's layout, reads
   ``target.json`` and the lock, checked against their signed hashes (:func:`~gapship.installer.bundle.verify.read_small_files`),
   asks the chosen interpreter for its version and ``packaging.tags.sys_tags()`` in a subprocess (``--python`` may
   differ from the interpreter running gapship), and refuses a mismatch with :class:`PolicyError`.
2. The payload is extracted and every file hash-checked as usual (``extract.py``).
3. :func:`create_venv`: the venv at its final path (:func:`make_venv`: ``python -m venv --without-pip``,
   done in this process when ``--python`` is the running interpreter), then, in this process, each
   wheel the lock pins by hash unpacked into it by pypa/installer (:mod:`.wheels`), every file checked against
   its wheel's ``RECORD``. Installing a wheel unpacks files; it runs no code from the wheel (no ``setup.py``),
   and nothing reaches an index: any missing wheel is a failure, not a fallback.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Not packaging.utils (wheel file names) here: the functions that use it import it, because it loads
# packaging.tags (sysconfig, logging, ...), which an install without dependencies never needs.
from packaging.version import InvalidVersion, Version

from ..errors import HostError, PolicyError, UnsafeContentError, UsageError
from ..formats.manifest import Component, FileEntry, Manifest
from ..kit import Malformed, canonical_json, parse_json
from ..trust import VerifiedManifest
from ..bundle.verify import read_small_files

ROOT = "dependencies/"
TARGET = "dependencies/target.json"
LOCK = "dependencies/requirements.lock"
BOOTSTRAP_LOCK = "dependencies/gapship.lock"
WHEELS = "dependencies/wheels/"
VENV = "venv"
TARGET_FORMAT = "gapship-dependencies"
TARGET_VERSION = 1
MAX_SMALL_FILE = 4 * 1024 * 1024  # target.json and the locks are read into memory: cap them
QUERY_TIMEOUT = 60

_PIN_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)")
_HASH_RE = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def pip_env() -> dict[str, str]:
    """The environment for every pip and interpreter subprocess gapship starts.

    ``--isolated`` alone is not enough: it ignores ``PIP_*`` variables and the user's config file, but
    pip still reads the global and site config files (``/etc/pip.conf``, ``/etc/xdg/pip/pip.conf``), which
    may add an index, find-links or constraints. ``PIP_CONFIG_FILE=/dev/null`` is pip's documented way
    to load no config file at all, so what pip does depends only on the options gapship passes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PYTHONNOUSERSITE"] = "1"
    return env


# -- target.json and the lock: the format both sides share ------------------------------------------


@dataclass(frozen=True)
class Target:
    """What the wheels were chosen for (``dependencies/target.json``)."""

    python: str  # "3.11"
    implementation: str  # "cp"
    platforms: tuple[str, ...]
    bootstrap: bool = False  # whether gapship.lock is present

    def to_bytes(self) -> bytes:
        return canonical_json({
            "format": TARGET_FORMAT, "format_version": TARGET_VERSION, "python": self.python,
            "implementation": self.implementation, "platforms": list(self.platforms), "bootstrap": self.bootstrap,
        }) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Target:
        raw = parse_json(data, source=TARGET, error=UnsafeContentError, invalid="{source} is not valid JSON")
        keys = {"format", "format_version", "python", "implementation", "platforms", "bootstrap"}
        if not isinstance(raw, dict) or raw.keys() != keys or raw["format"] != TARGET_FORMAT \
                or raw["format_version"] != TARGET_VERSION:
            raise UnsafeContentError(f"{TARGET} is not a {TARGET_FORMAT} v{TARGET_VERSION} object", subject=TARGET)
        platforms = raw["platforms"]
        if not (isinstance(raw["python"], str) and isinstance(raw["implementation"], str)
                and isinstance(platforms, list) and platforms and all(isinstance(p, str) for p in platforms)
                and isinstance(raw["bootstrap"], bool)):
            raise UnsafeContentError(f"{TARGET} has a field of the wrong type", subject=TARGET)
        return cls(raw["python"], raw["implementation"], tuple(platforms), raw["bootstrap"])


@dataclass(frozen=True)
class Pin:
    """One entry of a lock: ``name==version`` and the sha256 digests pip must see."""

    name: str  # canonical
    version: str
    hashes: tuple[str, ...]


def render_lock(pins: Iterable[Pin], header: Sequence[str]) -> bytes:
    """The lock in pip's ``--require-hashes`` form; :func:`parse_lock` reads exactly this back."""
    lines = [f"# {line}" for line in header]
    for pin in sorted(pins, key=lambda p: (p.name, p.version)):
        lines.append(f"{pin.name}=={pin.version} \\")
        lines.extend(f"    --hash=sha256:{h}" + (" \\" if i < len(pin.hashes) - 1 else "")
                     for i, h in enumerate(pin.hashes))
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_lock(data: bytes, *, source: str) -> tuple[Pin, ...]:
    """Accept only hash-pinned ``name==version`` lines: a lock that carried a pip option such as
    ``--index-url``, ``--find-links`` or ``-e`` could point pip at the network or at code to build."""
    from packaging.utils import canonicalize_name

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeContentError(f"{source} is not UTF-8", subject=source) from None
    pins: list[Pin] = []
    for number, line in _logical_lines(text):
        words = line.split()
        pin = _PIN_RE.fullmatch(words[0])
        hashes = [_HASH_RE.fullmatch(w) for w in words[1:]]
        if pin is None or not hashes or not all(hashes):
            raise UnsafeContentError(
                f"{source} line {number} is not a hash-pinned requirement (name==version --hash=sha256:...)",
                subject=source,
            )
        try:
            Version(pin[2])
        except InvalidVersion:
            raise UnsafeContentError(f"{source} line {number}: {pin[2]!r} is not a PEP 440 version",
                                     subject=source) from None
        pins.append(Pin(str(canonicalize_name(pin[1])), pin[2], tuple(h[1] for h in hashes if h)))
    if len({p.name for p in pins}) != len(pins):
        raise UnsafeContentError(f"{source} pins a package twice", subject=source)
    return tuple(pins)


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    start, parts = 0, list[str]()
    for number, line in enumerate(text.splitlines(), 1):
        if not parts and (not line.strip() or line.lstrip().startswith("#")):
            continue
        start = start if parts else number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        yield start, " ".join(parts)
        parts = []
    if parts:
        yield start, " ".join(parts)


# -- planning: everything that must hold before a byte is written ----------------------------------


@dataclass(frozen=True)
class Interpreter:
    """What the chosen Python says about itself (asked in a subprocess)."""

    executable: str
    version: str  # "3.11"
    full_version: str
    implementation: str  # "cp"
    tags: tuple[str, ...]  # packaging.tags.sys_tags(), most preferred first

    @property
    def platforms(self) -> frozenset[str]:
        return frozenset(t.rsplit("-", 1)[1] for t in self.tags)


@dataclass(frozen=True)
class DependencyPlan:
    target: Target
    interpreter: Interpreter
    pins: tuple[Pin, ...]
    wheels: tuple[str, ...]  # file names under dependencies/wheels/
    # (file name, hex sha256) from the signed manifest, when it hashes with sha256 (wheels.choose_wheels)
    digests: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "python": self.interpreter.executable,
            "python_version": self.interpreter.full_version,
            "target_python": self.target.python,
            "platforms": list(self.target.platforms),
            "packages": len(self.pins),
        }


def dependency_component(manifest: Manifest) -> Component | None:
    """The one dependencies component; a second would carry files past :func:`_check_layout`."""
    found = [c for c in manifest.components if c.kind == "dependencies"]
    if len(found) > 1:
        raise UnsafeContentError("the manifest has more than one dependencies component", subject="components")
    return found[0] if found else None


def plan_dependencies(bundle: Path, verified: VerifiedManifest, *, python: str | None) -> DependencyPlan | None:
    """Check, without writing anything, that this host can take the bundle's dependencies; return the
    plan, or ``None`` when the bundle carries none. Raises :class:`PolicyError` (exit 5) on a mismatch."""
    m = verified.manifest
    comp = dependency_component(m)
    if comp is None:
        return None
    files = {f.path: f for f in comp.files}
    wheels = _check_layout(files)
    small = read_small_files(bundle, m, [files[TARGET], files[LOCK]], cap=MAX_SMALL_FILE)
    target = Target.from_bytes(small[TARGET])
    pins = parse_lock(small[LOCK], source=LOCK)
    _check_pins_have_wheels(pins, wheels)
    interpreter = query_interpreter(python or sys.executable)
    check_host(target, wheels, interpreter)
    digests = tuple((name, files[WHEELS + name].hash) for name in wheels) if m.hash_algorithm == "sha256" else ()
    return DependencyPlan(target=target, interpreter=interpreter, pins=pins, wheels=wheels, digests=digests)


def _check_layout(files: dict[str, FileEntry]) -> tuple[str, ...]:
    """Only the four kinds of file above; wheel names must parse (PEP 427)."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    for required in (TARGET, LOCK):
        if required not in files:
            raise UnsafeContentError(f"the dependencies component lacks {required}", subject=required)
    wheels = []
    for path in files:
        if path in (TARGET, LOCK, BOOTSTRAP_LOCK):
            continue
        name = path[len(WHEELS):]
        if not path.startswith(WHEELS) or "/" in name or not name.endswith(".whl"):
            raise UnsafeContentError(f"unexpected file {path!r} in the dependencies component", subject=path)
        try:
            parse_wheel_filename(name)
        except InvalidWheelFilename:
            raise UnsafeContentError(f"{path!r} is not a valid wheel file name", subject=path) from None
        wheels.append(name)
    return tuple(sorted(wheels))


def _check_pins_have_wheels(pins: tuple[Pin, ...], wheels: tuple[str, ...]) -> None:
    from packaging.utils import parse_wheel_filename

    present = set()
    for name in wheels:
        dist, version, _, _ = parse_wheel_filename(name)
        present.add((str(dist), version))
    for pin in pins:
        if (pin.name, Version(pin.version)) not in present:
            raise UnsafeContentError(f"{LOCK} pins {pin.name}=={pin.version}, but the bundle has no wheel for it",
                                     subject=LOCK)


def check_host(target: Target, wheels: Iterable[str], interpreter: Interpreter) -> None:
    """Refuse (exit 5) unless the interpreter is the target's Python and accepts every wheel's tags."""
    from packaging.utils import parse_wheel_filename

    where = f"{interpreter.executable} (Python {interpreter.full_version})"
    if interpreter.version != target.python or interpreter.implementation != target.implementation:
        raise PolicyError(
            f"the bundle's dependencies are for {target.implementation}{target.python.replace('.', '')} "
            f"(Python {target.python}), but {where} is {interpreter.implementation}"
            f"{interpreter.version.replace('.', '')}",
            subject="python", hint="choose the target interpreter with --python",
        )
    if not interpreter.platforms & set(target.platforms):
        raise PolicyError(
            f"the bundle's dependencies are for platform {' or '.join(target.platforms)}, which {where} does "
            f"not support (its platforms include {_best_platform(interpreter)})",
            subject="platform",
        )
    accepted = set(interpreter.tags)
    for name in wheels:
        tags = {str(t) for t in parse_wheel_filename(name)[3]}
        if not tags & accepted:
            raise PolicyError(
                f"wheel {name} fits none of the tags {where} accepts (the best is {interpreter.tags[0]})",
                subject=f"{WHEELS}{name}",
            )


def _best_platform(interpreter: Interpreter) -> str:
    return next((t.rsplit("-", 1)[1] for t in interpreter.tags if not t.endswith("-any")), "any")


# The interpreter runs the installer's own copy of `packaging` (loaded by path, so an older copy in the
# target's site-packages cannot answer instead) and reports what pip will accept there.
_QUERY = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("packaging", sys.argv[1], submodule_search_locations=[sys.argv[2]])
module = importlib.util.module_from_spec(spec)
sys.modules["packaging"] = module
spec.loader.exec_module(module)
from packaging import tags
print(json.dumps({
    "version": "%d.%d" % sys.version_info[:2],
    "full_version": "%d.%d.%d" % sys.version_info[:3],
    "implementation": tags.interpreter_name(),
    "tags": [str(t) for t in tags.sys_tags()],
}))
"""


def query_interpreter(python: str) -> Interpreter:
    """Ask ``python`` (a path or a command name) for its version and platform tags."""
    found = shutil.which(python)
    if found is None:
        raise UsageError(f"Python interpreter {python!r} not found or not executable", subject=python)
    executable = os.path.abspath(found)
    if _is_running(executable):
        return _this_interpreter(executable)
    import packaging

    init = Path(packaging.__file__)
    argv = [executable, "-I", "-c", _QUERY, str(init), str(init.parent)]
    try:
        done = subprocess.run(argv, env=pip_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=QUERY_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"cannot run {executable} to ask for its version and platform tags: {e}",
                         subject=python) from None
    try:
        raw = parse_json(done.stdout, source=executable, error=Malformed) if done.returncode == 0 else None
    except ValueError:
        raw = None
    fields = ("version", "full_version", "implementation")
    if not (isinstance(raw, dict) and all(isinstance(raw.get(k), str) for k in fields)
            and isinstance(raw.get("tags"), list) and raw["tags"] and all(isinstance(t, str) for t in raw["tags"])):
        raise UsageError(f"cannot ask {executable} for its version and platform tags: {_last_line(done.stderr)}",
                         subject=python)
    # The venv is made by what the user named (``executable``), not by what it calls itself.
    return Interpreter(executable=executable, version=raw["version"], full_version=raw["full_version"],
                       implementation=raw["implementation"], tags=tuple(raw["tags"]))


# -- creating the venv ----------------------------------------------------------------------------


def _is_running(executable: str) -> bool:
    """Whether ``executable`` is the interpreter running gapship (the default ``--python``)."""
    return os.path.realpath(executable) == os.path.realpath(sys.executable)


def _this_interpreter(executable: str) -> Interpreter:
    """What :data:`_QUERY` would print, asked of this process: the same interpreter and the same copy
    of ``packaging``, without a second interpreter's start (issue 16: every 10 ms counts here)."""
    from packaging import tags

    return Interpreter(executable=executable, version="%d.%d" % sys.version_info[:2],
                       full_version="%d.%d.%d" % sys.version_info[:3], implementation=tags.interpreter_name(),
                       tags=tuple(str(t) for t in tags.sys_tags()))


def create_venv(version_dir: Path, plan: DependencyPlan, *, compile_bytecode: bool = False) -> Path:
    """Create ``version_dir/venv`` with the planned interpreter and install the locked wheels offline.

    The venv is made at its final path because venvs are not relocatable (absolute paths in
    ``pyvenv.cfg`` and in every script); see install.py for how that fits the atomic switch. It is made
    without pip (no ensurepip needed on the target Python, and a venv that only serves), by
    :func:`make_venv`; the wheels are unpacked in this process by pypa/installer (:mod:`.wheels`), all
    at once, each file checked against its wheel's ``RECORD``, and with ``compile_bytecode`` compiled
    by the planned interpreter on every core."""
    from .wheels import choose_wheels, compile_bytecode as compile_all, install_wheels

    root = Path(os.path.abspath(version_dir))
    venv = root / VENV
    make_venv(venv, plan.interpreter.executable)
    choices = choose_wheels(root / WHEELS, plan.wheels, [(p.name, p.version, p.hashes) for p in plan.pins],
                            plan.interpreter.tags, digests=dict(plan.digests))
    install_wheels(venv, choices, python_version=plan.interpreter.version)
    if compile_bytecode:
        compile_all(plan.interpreter.executable, venv / "lib" / f"python{plan.interpreter.version}" / "site-packages",
                    pip_env())
    return venv


def make_venv(venv: Path, python: str) -> None:
    """``python -m venv --without-pip venv`` with umask 022. When ``python`` is the interpreter running
    gapship, this process does it with the same standard library code (``venv.EnvBuilder``, as that
    command line sets it up) instead of starting a second interpreter; the modes are then set as
    umask 022 would have made them (the umask is the process's, shared by its threads: not changed
    here). Either way the result is what ``adopt.check_venv`` checks."""
    if not _is_running(python):
        _run([python, "-I", "-m", "venv", "--without-pip", str(venv)], what=f"create the venv {venv}")
        return
    import venv as stdlib_venv

    options: dict[str, object] = {"symlinks": os.name != "nt", "with_pip": False}
    if sys.version_info >= (3, 13):
        options["scm_ignore_files"] = frozenset({"git"})  # what `python -m venv` writes there (.gitignore)
    try:
        stdlib_venv.EnvBuilder(**options).create(str(venv))  # type: ignore[arg-type]
        _settle_venv_modes(venv)
    except OSError as e:
        raise HostError(f"cannot create the venv {venv}: {e.strerror or e}", subject=str(venv)) from None


def _settle_venv_modes(venv: Path) -> None:
    """0755 for directories and executables, 0644 for other files (what umask 022 leaves of what
    ``venv`` asks for); links keep theirs."""
    for folder, dirs, files in os.walk(venv):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(path, 0o755 if st.st_mode & 0o100 else 0o644)


def _run(argv: list[str], *, what: str) -> None:
    try:
        # umask 022: under the caller's 000 the venv would be world-writable (and refused when adopted),
        # under 077 unreadable by the serving user
        done = subprocess.run(argv, env=pip_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace", check=False, umask=0o022)
    except OSError as e:
        raise HostError(f"cannot {what}: {e.strerror}", subject=argv[0]) from None
    if done.returncode != 0:
        raise HostError(f"cannot {what}: {_last_line(done.stdout)}", subject=argv[0],
                        hint="the previous version stays active")


def _last_line(output: str) -> str:
    """pip's most telling line: the last ``ERROR:`` line, else the last non-empty one."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1][:500]
