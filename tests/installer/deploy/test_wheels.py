"""The in-process wheel install (installer/deploy/wheels.py): what pip made, no code run, RECORD checked.

The wheels are real zip archives written here with their ``RECORD``; the venv is made by the real
``python -m venv`` and checked afterwards by the real adoption check (``adopt.check_venv``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
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


# -- issue 16: the venv made in-process, wheels unpacked at once -------------------------------------

def _tree(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every entry under ``root``: its kind, mode and bytes (or link target)."""
    out: dict[str, tuple[str, int, bytes | str]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def _cfg(venv: Path) -> dict[str, str]:
    lines = (venv / "pyvenv.cfg").read_text().splitlines()
    return {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in lines if "=" in line) if k.strip() != "command"}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_venv_made_in_process_is_the_one_python_m_venv_makes(tmp_path: Path, umask: int) -> None:
    """Same entries, modes, links and pyvenv.cfg as ``python -m venv --without-pip`` under umask 022,
    whatever this process's umask; its python runs, and it has no pip."""
    from gapship.installer.deploy.deps import make_venv

    reference = tmp_path / "ref" / "venv"
    reference.parent.mkdir()
    _run(sys.executable, "-I", "-m", "venv", "--without-pip", reference)
    mine = tmp_path / "mine" / "venv"
    mine.parent.mkdir()
    old = os.umask(umask)
    try:
        make_venv(mine, sys.executable)
    finally:
        os.umask(old)
    ref_tree, my_tree = _tree(reference), _tree(mine)
    assert {k: v[:2] for k, v in my_tree.items()} == {k: v[:2] for k, v in ref_tree.items()}
    links = {k: v[2] for k, v in my_tree.items() if v[0] == "link"}
    assert links == {k: v[2] for k, v in ref_tree.items() if v[0] == "link"}
    assert _cfg(mine) == _cfg(reference) and _cfg(mine)["include-system-site-packages"] == "false"
    assert _run(mine / "bin" / "python", "-c", "import sys; print(sys.prefix)") == f"{mine}\n"
    done = subprocess.run([str(mine / "bin" / "python"), "-m", "pip", "--version"], capture_output=True,
                          env=clean_env(), check=False)
    assert done.returncode != 0 and b"No module named pip" in done.stderr


def test_another_python_still_gets_its_venv_from_its_own_venv_module(tmp_path: Path) -> None:
    """--python naming another interpreter (here the same one by another path that realpath cannot
    join) is asked in a subprocess, as before."""
    from gapship.installer.deploy import deps

    calls: list[list[str]] = []
    real_run = deps._run

    def spy(argv: list[str], *, what: str) -> None:
        calls.append(argv)
        real_run(argv, what=what)

    copy = tmp_path / "bin" / "python-copy"
    copy.parent.mkdir()
    copy.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    copy.chmod(0o755)
    mp = pytest.MonkeyPatch()
    mp.setattr(deps, "_run", spy)
    try:
        deps.make_venv(tmp_path / "venv", str(copy))
    finally:
        mp.undo()
    assert calls and calls[0][:4] == [str(copy), "-I", "-m", "venv"]
    assert (tmp_path / "venv" / "pyvenv.cfg").is_file()


def _many(folder: Path) -> list[Path]:
    """Wheels with big and small files, a console script, a ``#!python`` script, a data file, a
    stored member and a bzip2 member (zipfile's own reader), so every path of the writer is taken."""
    folder.mkdir()
    wheels = [_demo(folder)]
    for i in range(4):
        files = {f"gsm{i}/m{j:03d}.py": (f"V = {j}\n" * (1 + j * 37)).encode() for j in range(60)}
        files[f"gsm{i}/big.bin"] = os.urandom(300_000) + b"\0" * 3_000_000
        files[f"gsm{i}-1.0.data/data/share/gsm{i}.txt"] = b"data\n"
        wheels.append(make_wheel(folder, f"gsm{i}", files, entry_points=f"[console_scripts]\ngsm{i} = gsm{i}:main\n"))
    odd = folder / "odd"
    odd.mkdir()
    plain = make_wheel(odd, "gso", {"gso/__init__.py": b"X = 1\n", "gso/stored.txt": b"stored " * 1000,
                                    "gso/bz.txt": b"bzip2 " * 1000})
    target = folder / plain.name
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            kind = {"gso/stored.txt": zipfile.ZIP_STORED, "gso/bz.txt": zipfile.ZIP_BZIP2}.get(item.filename,
                                                                                           zipfile.ZIP_DEFLATED)
            dst.writestr(item, src.read(item), kind)
    return [*wheels, target]


@pytest.mark.parametrize("inflate", ["default", "zlib"])
def test_concurrent_unpack_writes_the_same_tree_as_one_thread(tmp_path: Path, interpreter: Interpreter,
                                                             inflate: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file, mode, RECORD and script of the venv is the same whether the files of all the wheels
    are written by one thread or by several at once (and with zlib as with ISA-L's inflate)."""
    from gapship.installer.deploy import wheels as wheels_module
    from gapship.installer.deploy.deps import make_venv

    if inflate == "zlib":
        monkeypatch.setattr(wheels_module, "_INFLATE", __import__("zlib"))
    built = _many(tmp_path / "w")
    trees = []
    root = tmp_path / "v"  # the same path both times: scripts and RECORD hold the venv's absolute path
    for workers in (1, 4):
        shutil.rmtree(root, ignore_errors=True)
        (root / WHEELS).mkdir(parents=True)
        copies = [root / WHEELS / w.name for w in built]
        for wheel, copy in zip(built, copies):
            copy.write_bytes(wheel.read_bytes())
        plan = _plan(root, interpreter, copies)
        venv = root / "venv"
        make_venv(venv, sys.executable)
        choices = wheels_module.choose_wheels(root / WHEELS, plan.wheels,
                                              [(p.name, p.version, p.hashes) for p in plan.pins], interpreter.tags)
        wheels_module.install_wheels(venv, choices, python_version=interpreter.version, workers=workers)
        check_venv(root, plan)
        trees.append(_tree(venv))
    assert trees[0] == trees[1]
    site = f"lib/python{PY}/site-packages"
    assert trees[1][f"{site}/gso/bz.txt"][2] == b"bzip2 " * 1000
    assert trees[1][f"{site}/gso/stored.txt"][2] == b"stored " * 1000
    assert trees[1]["bin/gsm0"][1] == 0o755 and trees[1]["share/gsm3.txt"][2] == b"data\n"


def test_rejects_wheel_member_whose_local_header_names_another_file(tmp_path: Path, interpreter: Interpreter) -> None:
    """The central directory says gsw/__init__.py, the local header another name of the same length:
    two names for one member, refused as zipfile refuses it."""
    wheel = make_wheel(tmp_path, "gsw", {"gsw/__init__.py": b"X = 1\n"})
    data = bytearray(wheel.read_bytes())
    at = data.index(b"gsw/__init__.py")  # the first local header's name (the central directory comes last)
    data[at:at + len(b"gsw/__init__.py")] = b"gsw/__evil__.py"
    wheel.write_bytes(bytes(data))
    plan = _plan(tmp_path / "v", interpreter, [wheel])
    with pytest.raises(UnsafeContentError, match="has another name in its local header"):
        create_venv(tmp_path / "v", plan)


def test_rejects_wheel_member_that_inflates_far_past_its_record_size(tmp_path: Path, interpreter: Interpreter) -> None:
    """A small RECORD entry for 64 MiB of zeros (a few KiB compressed): refused once past the size,
    after at most a block more, never inflated whole."""
    bomb = b"\0" * (64 * 1024 * 1024)
    wheel = make_wheel(tmp_path, "gsw", {"gsw/zeros.bin": bomb}, record_bytes={"gsw/zeros.bin": b"\0" * 10})
    plan = _plan(tmp_path / "v", interpreter, [wheel])
    with pytest.raises(UnsafeContentError, match=r"gsw/zeros.bin in wheel .* is longer than its RECORD entry"):
        create_venv(tmp_path / "v", plan)


def test_a_failing_file_stops_every_writer_thread(tmp_path: Path, interpreter: Interpreter) -> None:
    """One bad file among many: the install raises that file's error, and no writer thread is left
    running (the version directory is removed right after, install.py)."""
    import threading

    files = {f"gsw/m{j:03d}.py": b"V = 1\n" * 500 for j in range(200)}
    files["gsw/bad.py"] = b"EVIL = 1\n"
    wheel = make_wheel(tmp_path, "gsw", files, record_bytes={"gsw/bad.py": b"GOOD = 1\n"})
    plan = _plan(tmp_path / "v", interpreter, [wheel])
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(UnsafeContentError, match="gsw/bad.py in wheel .* does not match"):
        create_venv(tmp_path / "v", plan)
    assert not [t for t in threading.enumerate() if t.name.startswith("gapship-wheel") and t.name not in before]
    assert sys.getswitchinterval() == switch  # set back


switch = sys.getswitchinterval()


def test_tags_asked_in_process_are_the_ones_the_interpreter_gives(tmp_path: Path) -> None:
    """The running interpreter is asked in-process; the same one behind another path (a wrapper that
    realpath cannot see through) is asked in a subprocess: the answers agree."""
    from gapship.installer.deploy.deps import query_interpreter as ask

    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    here, there = ask(sys.executable), ask(str(wrapper))
    assert (here.version, here.full_version, here.implementation, here.tags) == \
        (there.version, there.full_version, there.implementation, there.tags)
    assert here.executable == os.path.abspath(sys.executable) and there.executable == str(wrapper)
