"""The in-process wheel install (installer/deploy/wheels.py): what pip made, no code run, RECORD checked.

The wheels are real zip archives written here with their ``RECORD``; the venv is made by the real
``python -m venv`` and checked afterwards by the real adoption check (``adopt.check_venv``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deps_testing import PY, clean_env, host_supported
from gapship.installer.deploy.adopt import check_venv
from gapship.installer.deploy.deps import WHEELS, DependencyPlan, Interpreter, Pin, Target, create_venv, \
    query_interpreter
from gapship.installer.errors import UnsafeContentError

pytestmark = pytest.mark.skipif(host_supported() is not None, reason=str(host_supported()))


@pytest.fixture(scope="module")
def interpreter() -> Interpreter:
    return query_interpreter(sys.executable)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def make_wheel(folder: Path, dist: str, files: dict[str, bytes], *, version: str = "1.0",
               entry_points: str | None = None, unlisted: dict[str, bytes] | None = None,
               record_bytes: dict[str, bytes] | None = None) -> Path:
    """A py3-none-any wheel. ``unlisted`` files are left out of RECORD; ``record_bytes`` gives RECORD
    the hash of other bytes than the file holds."""
    info = f"{dist}-{version}.dist-info"
    members = dict(files)
    members[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()
    members[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if entry_points is not None:
        members[f"{info}/entry_points.txt"] = entry_points.encode()
    claimed = {**members, **(record_bytes or {})}
    record = "".join(f"{p},sha256={_b64(claimed[p])},{len(claimed[p])}\n" for p in members) + f"{info}/RECORD,,\n"
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**members, **(unlisted or {})}.items():
            info_ = zipfile.ZipInfo(name)
            info_.external_attr = (stat.S_IFREG | (0o755 if "/scripts/" in name else 0o644)) << 16
            zf.writestr(info_, data, zipfile.ZIP_DEFLATED)
        zf.writestr(f"{info}/RECORD", record)
    return path


def _plan(root: Path, interpreter: Interpreter, wheels: list[Path]) -> DependencyPlan:
    (root / WHEELS).mkdir(parents=True, exist_ok=True)
    pins = []
    for wheel in wheels:
        target = root / WHEELS / wheel.name
        if wheel != target:
            wheel.rename(target)
        dist, version = wheel.name.split("-")[:2]
        pins.append(Pin(dist.replace("_", "-"), version, (hashlib.sha256(target.read_bytes()).hexdigest(),)))
    return DependencyPlan(target=Target(PY, "cp", ("any",)), interpreter=interpreter, pins=tuple(pins),
                          wheels=tuple(sorted(w.name for w in wheels)))


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{PY}" / "site-packages"


def _demo(folder: Path, marker: Path | None = None) -> Path:
    """A wheel with a console script, a ``#!python`` script, a path ``.pth`` and (if ``marker``) an
    executable ``.pth`` line that would leave ``marker`` behind if anything ran it."""
    pth = b"gsw_extra\n" + (f"import os; open({str(marker)!r}, 'w').close()\n".encode() if marker else b"")
    return make_wheel(folder, "gsw", {
        "gsw/__init__.py": b"def main():\n    print('hello from gsw')\n",
        "gsw_extra/gsw_more.py": b"VALUE = 'via pth'\n",
        "gsw.pth": pth,
        "gsw-1.0.data/scripts/gsw-raw": b"#!python\nprint('raw script')\n",
    }, entry_points="[console_scripts]\ngsw-hello = gsw:main\n")


def _run(*argv: object) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=clean_env(), check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_console_scripts_pth_and_scripts_work_and_the_venv_is_adoptable(tmp_path: Path,
                                                                        interpreter: Interpreter) -> None:
    plan = _plan(tmp_path / "v", interpreter, [_demo(tmp_path)])
    venv = create_venv(tmp_path / "v", plan)
    hello = venv / "bin" / "gsw-hello"
    assert hello.read_text().splitlines()[0] == f"#!{venv / 'bin' / 'python'}"
    assert stat.S_IMODE(hello.stat().st_mode) == 0o755
    assert _run(hello) == "hello from gsw\n"
    assert _run(venv / "bin" / "gsw-raw") == "raw script\n"
    assert _run(venv / "bin" / "python", "-c", "import gsw_more; print(gsw_more.VALUE)") == "via pth\n"
    info = _site_packages(venv) / "gsw-1.0.dist-info"
    assert (info / "INSTALLER").read_bytes() == b"gapship\n" and "gsw-hello" in (info / "RECORD").read_text()
    check_venv(tmp_path / "v", plan, caches=frozenset(
        str(p.relative_to(tmp_path / "v")) for p in (tmp_path / "v").rglob("__pycache__")))


@pytest.mark.slow  # runs pip
def test_lays_out_the_same_files_with_the_same_modes_as_pip(tmp_path: Path, interpreter: Interpreter) -> None:
    """The contract the old pip step kept: pip's own install of the same wheel is the reference."""
    wheel = _demo(tmp_path)
    reference = tmp_path / "pip-venv"
    _run(sys.executable, "-m", "venv", "--without-pip", reference)
    _run(sys.executable, "-m", "pip", "--python", reference / "bin" / "python", "install", "--isolated", "--no-index",
         "--no-deps", "--no-compile", "--disable-pip-version-check", wheel)
    plan = _plan(tmp_path / "v", interpreter, [wheel])
    venv = create_venv(tmp_path / "v", plan, compile_bytecode=False)

    def layout(root: Path) -> dict[str, int]:
        return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in root.rglob("*")
                if "__pycache__" not in p.parts and not p.name.startswith("activate") and p.name != "Activate.ps1"
                and p.name not in ("direct_url.json", "REQUESTED")}

    assert layout(venv) == layout(reference)
    for script in ("gsw-hello", "gsw-raw"):
        assert _run(venv / "bin" / script) == _run(reference / "bin" / script)


def test_no_code_from_a_wheel_runs_at_install(tmp_path: Path, interpreter: Interpreter) -> None:
    """A ``.pth`` line that imports runs whenever the venv's python starts; not while installing
    or compiling bytecode (``-I -S``)."""
    marker = tmp_path / "ran"
    plan = _plan(tmp_path / "v", interpreter, [_demo(tmp_path, marker)])
    venv = create_venv(tmp_path / "v", plan, compile_bytecode=True)
    assert not marker.exists()
    assert list(_site_packages(venv).glob("gsw/__pycache__/*.pyc")), "bytecode was asked for"
    _run(venv / "bin" / "python", "-c", "pass")
    assert marker.exists()  # the same .pth does run once the serving python starts


def test_compiles_no_bytecode_unless_asked(tmp_path: Path, interpreter: Interpreter) -> None:
    plan = _plan(tmp_path / "v", interpreter, [_demo(tmp_path)])
    venv = create_venv(tmp_path / "v", plan)
    assert (_site_packages(venv) / "gsw" / "__init__.py").is_file()
    assert not list(_site_packages(venv).rglob("*.pyc"))


def test_rejects_wheel_file_that_does_not_match_its_record(tmp_path: Path, interpreter: Interpreter) -> None:
    """The wheel matches the signed lock, but one file's bytes are not the ones its RECORD names."""
    wheel = make_wheel(tmp_path, "gsw", {"gsw/__init__.py": b"EVIL = 1\n"},
                       record_bytes={"gsw/__init__.py": b"GOOD = 1\n"})
    plan = _plan(tmp_path / "v", interpreter, [wheel])
    with pytest.raises(UnsafeContentError, match=r"gsw/__init__.py in wheel gsw-1.0-py3-none-any.whl does not match"):
        create_venv(tmp_path / "v", plan)


def test_rejects_wheel_file_longer_than_its_record(tmp_path: Path, interpreter: Interpreter) -> None:
    wheel = make_wheel(tmp_path, "gsw", {"gsw/__init__.py": b"GOOD = 1\n" + b"#" * 100_000},
                       record_bytes={"gsw/__init__.py": b"GOOD = 1\n"})
    plan = _plan(tmp_path / "v", interpreter, [wheel])
    with pytest.raises(UnsafeContentError, match="is longer than its RECORD entry"):
        create_venv(tmp_path / "v", plan)


def test_rejects_wheel_file_missing_from_record(tmp_path: Path, interpreter: Interpreter) -> None:
    wheel = make_wheel(tmp_path, "gsw", {"gsw/__init__.py": b""}, unlisted={"gsw/hidden.py": b"import os\n"})
    plan = _plan(tmp_path / "v", interpreter, [wheel])
    with pytest.raises(UnsafeContentError, match=r"gsw/hidden.py is not mentioned in RECORD"):
        create_venv(tmp_path / "v", plan)
    assert not (_site_packages(tmp_path / "v" / "venv") / "gsw").exists()


def test_rejects_wheel_path_that_leaves_the_venv(tmp_path: Path, interpreter: Interpreter) -> None:
    wheel = make_wheel(tmp_path, "gsw", {"gsw-1.0.data/data/../../../escaped": b"x\n"})
    plan = _plan(tmp_path / "v", interpreter, [wheel])
    with pytest.raises(UnsafeContentError, match="outside of the target directory"):
        create_venv(tmp_path / "v", plan)
    assert not list(tmp_path.rglob("escaped"))


def test_rejects_two_wheels_that_carry_the_same_file(tmp_path: Path, interpreter: Interpreter) -> None:
    """pip would let the second overwrite the first; here a wheel cannot replace another's code."""
    first = make_wheel(tmp_path, "gsa", {"shared/__init__.py": b"WHO = 'a'\n"})
    second = make_wheel(tmp_path, "gsb", {"shared/__init__.py": b"WHO = 'b'\n"})
    plan = _plan(tmp_path / "v", interpreter, [first, second])
    with pytest.raises(UnsafeContentError, match="would overwrite shared/__init__.py"):
        create_venv(tmp_path / "v", plan)


def test_rejects_wheel_that_overwrites_the_venv_python(tmp_path: Path, interpreter: Interpreter) -> None:
    wheel = make_wheel(tmp_path, "gsw", {"gsw-1.0.data/scripts/python": b"#!/bin/sh\necho owned\n"})
    plan = _plan(tmp_path / "v", interpreter, [wheel])
    with pytest.raises(UnsafeContentError, match="would overwrite python"):
        create_venv(tmp_path / "v", plan)
    assert os.path.realpath(tmp_path / "v" / "venv" / "bin" / "python") == os.path.realpath(sys.executable)


def test_rejects_a_wheel_whose_hash_the_lock_does_not_pin(tmp_path: Path, interpreter: Interpreter) -> None:
    plan = _plan(tmp_path / "v", interpreter, [make_wheel(tmp_path, "gsw", {"gsw/__init__.py": b""})])
    swapped = DependencyPlan(target=plan.target, interpreter=plan.interpreter, wheels=plan.wheels,
                             pins=(Pin("gsw", "1.0", ("0" * 64,)),))
    with pytest.raises(UnsafeContentError, match="no bundled wheel for gsw==1.0"):
        create_venv(tmp_path / "v", swapped)
