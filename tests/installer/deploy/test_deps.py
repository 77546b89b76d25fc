"""Installing a bundle's dependencies: host checks before any write, the venv, faults and attacks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deps_testing import (
    CP, FOREIGN_PLATFORM, GAPSHIP, HOST_PLATFORM, PY, Wheelhouse, add_dependencies, build_cli, retag, wheelhouse,
    write_spec,
)
from gapship.bundler.build import build
from gapship.bundler.deps.freeze import FrozenDependencies
from gapship.bundler.keys import keygen
from gapship.bundler.spec import load_spec
from gapship.installer.deploy.deps import LOCK, TARGET, Target, parse_lock
from gapship.installer.errors import UnsafeContentError
from gapship.installer.formats.manifest import Manifest
from gapship_testing import run, tree


@pytest.fixture(scope="session")
def house(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    return wheelhouse(tmp_path_factory)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, house: Wheelhouse) -> dict[str, Path]:
    """Built once for this module: a key, its trust dir, and bundles 1.0.0 and 2.0.0 for this host.
    Tests copy a bundle before changing it."""
    root = tmp_path_factory.mktemp("deps-install")
    private, public, _ = keygen("release", root / "keys")
    (root / "trust").mkdir()
    (root / "trust" / public.name).write_bytes(public.read_bytes())
    out = {"key": private, "trust": root / "trust"}
    for version in ("1.0.0", "2.0.0"):
        spec = add_dependencies(write_spec(root / f"spec-{version}", version=version), requirements="gsdemo-pure\n",
                                find_links=(house.wheels,))
        build_cli(spec, root / version, private)
        out[version] = root / version
    return out


def _bundle(tmp_path: Path, key, make_spec, house: Wheelhouse, *, version: str = "1.0.0", name: str = "b",
            requirements: str = "gsdemo-pure\n", **deps) -> Path:
    deps.setdefault("find_links", (house.wheels,))
    spec = add_dependencies(make_spec(version=version), requirements=requirements, **deps)
    out = tmp_path / name
    build_cli(spec, out, key.private)
    return out


def _fake_python(tmp_path: Path, on_venv: str) -> Path:
    """An interpreter that answers like the real one but does ``on_venv`` when asked to make a venv."""
    script = tmp_path / "python-wrapper"
    script.write_text(f'#!/bin/sh\ncase "$*" in *"-m venv"*) {on_venv};; esac\nexec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return script


def _venv_python(prefix: Path, version: str = "current") -> Path:
    return prefix / "demo" / version / "venv" / "bin" / "python"


@pytest.mark.slow  # creates a venv and pip-installs into it
def test_installs_dependencies_into_the_versions_venv(tmp_path: Path, shared: dict[str, Path]) -> None:
    prefix = tmp_path / "prefix"
    result = run("install", shared["1.0.0"], "--trust", shared["trust"], "--prefix", prefix, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["venv"] == str(prefix / "demo" / "1.0.0" / "venv")
    code = "import gsdemo_pure, gsdemo_plat; print(gsdemo_pure.VALUE, gsdemo_plat.VALUE)"
    done = subprocess.run([_venv_python(prefix), "-c", code], capture_output=True, text=True)
    assert done.stdout == "pure plat\n", done.stderr
    receipt = json.loads((prefix / "demo" / "current" / "receipt.json").read_text())
    assert receipt["dependencies"]["packages"] == 2 and receipt["dependencies"]["target_python"] == PY
    assert not (prefix / "demo" / "1.0.0" / ".incomplete").exists()


def test_venv_is_made_inside_a_version_directory_nobody_else_may_enter(
        tmp_path: Path, shared: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The version directory is already in the prefix when the venv is made under the caller's umask
    (000 would leave its folders world-writable until their modes are set): it is 0700 until then."""
    from gapship.installer.deploy import deps

    seen: list[int] = []
    real = deps.make_venv

    def spy(venv: Path, python: str) -> None:
        seen.append(stat.S_IMODE(os.stat(venv.parent).st_mode))
        real(venv, python)

    monkeypatch.setattr(deps, "make_venv", spy)
    old = os.umask(0)
    try:
        result = run("install", shared["1.0.0"], "--trust", shared["trust"], "--prefix", tmp_path / "prefix", "--json")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert seen == [0o700]
    version = tmp_path / "prefix" / "demo" / "1.0.0"
    assert stat.S_IMODE(version.stat().st_mode) == 0o755
    for folder in (version / "venv", version / "venv" / "bin", version / "venv" / "lib"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder


def test_rejects_platform_mismatch_before_writing(tmp_path: Path, house: Wheelhouse, make_key, make_trust,
                                                  make_spec) -> None:
    key = make_key("release")
    bundle = _bundle(tmp_path, key, make_spec, house, platforms=(FOREIGN_PLATFORM,))
    prefix = tmp_path / "prefix"
    result = run("install", bundle, "--trust", make_trust(key), "--prefix", prefix)
    assert result.exit_code == 5, result.output
    assert f"for platform {FOREIGN_PLATFORM}, which {sys.executable}" in result.stderr
    assert not prefix.exists()


def test_rejects_python_version_mismatch_before_writing(tmp_path: Path, house: Wheelhouse, make_key, make_trust,
                                                        make_spec) -> None:
    other = f"{sys.version_info[0]}.{sys.version_info[1] - 1}"
    other_cp = f"cp{sys.version_info[0]}{sys.version_info[1] - 1}"
    links = tmp_path / "links"
    links.mkdir()
    retag(house.plat(HOST_PLATFORM), links, python=other_cp, abi=other_cp, platform_tag=HOST_PLATFORM)
    key = make_key("release")
    bundle = _bundle(tmp_path, key, make_spec, house, requirements="gsdemo-plat\n", python=other,
                     find_links=(links,))
    prefix = tmp_path / "prefix"
    result = run("install", bundle, "--trust", make_trust(key), "--prefix", prefix)
    assert result.exit_code == 5, result.output
    assert f"dependencies are for {other_cp} (Python {other}), but" in result.stderr
    assert f"is {CP}" in result.stderr
    assert "--python" in result.stderr  # the hint
    assert not prefix.exists()


def test_rejects_tampered_wheel(tmp_path: Path, shared: dict[str, Path]) -> None:
    bundle = Path(shutil.copytree(shared["1.0.0"], tmp_path / "b"))
    m = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    (wheel,) = [f for f in m.files() if f.path.endswith("-py3-none-any.whl")]
    spot = wheel.offset + wheel.size // 2
    chunk = bundle / "chunks" / m.chunks[spot // m.chunk_size].name
    data = bytearray(chunk.read_bytes())
    data[spot % m.chunk_size] ^= 0x01
    chunk.write_bytes(bytes(data))
    prefix = tmp_path / "prefix"
    result = run("install", bundle, "--trust", shared["trust"], "--prefix", prefix)
    assert result.exit_code == 3, result.output
    assert f"chunks/{chunk.name}" in result.stderr and "does not match" in result.stderr
    assert not (prefix / "demo" / "1.0.0").exists() and not (prefix / "demo" / "current").exists()


@pytest.mark.slow  # creates a venv and pip-installs into it
def test_failed_venv_keeps_the_previous_version_current(tmp_path: Path, shared: dict[str, Path]) -> None:
    trust = shared["trust"]
    prefix = tmp_path / "prefix"
    assert run("install", shared["1.0.0"], "--trust", trust, "--prefix", prefix).exit_code == 0
    before = tree(prefix)
    second = shared["2.0.0"]
    broken = _fake_python(tmp_path, "echo 'Error: simulated venv failure' >&2; exit 1")
    result = run("install", second, "--trust", trust, "--prefix", prefix, "--python", broken)
    assert result.exit_code == 7, result.output
    assert "cannot create the venv" in result.stderr and "simulated venv failure" in result.stderr
    assert tree(prefix) == before
    assert (prefix / "demo" / "current").readlink() == Path("1.0.0")


@pytest.mark.slow  # creates a venv and pip-installs into it
def test_interrupted_venv_is_removed_by_the_next_run(tmp_path: Path, shared: dict[str, Path]) -> None:
    """SIGKILL while the venv is being made: `current` stays, the next run cleans up and installs."""
    trust, bundle = shared["trust"], shared["1.0.0"]
    prefix = tmp_path / "prefix"
    started = tmp_path / "venv-started"
    hanging = _fake_python(tmp_path, f"touch {started}; sleep 60")
    proc = subprocess.Popen([GAPSHIP, "install", bundle, "--trust", trust, "--prefix", prefix, "--python", hanging],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # not a timed assertion: wait for the wrapper to say the venv step began
            if started.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert started.exists(), "the install never reached the venv step"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    version = prefix / "demo" / "1.0.0"
    assert (version / ".incomplete").exists() and not (version / "receipt.json").exists()
    assert not (prefix / "demo" / "current").exists()

    result = run("install", bundle, "--trust", trust, "--prefix", prefix)
    assert result.exit_code == 0, result.output
    assert "installed demo 1.0.0" in result.stdout
    assert (version / "receipt.json").exists() and not (version / ".incomplete").exists()
    assert _venv_python(prefix).exists()


def _crafted_bundle(tmp_path: Path, key, make_spec, files: dict[str, bytes]) -> Path:
    """A correctly signed bundle whose dependencies component holds exactly ``files``."""
    src = tmp_path / "crafted"
    pairs = []
    for path, data in files.items():
        local = src / path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        pairs.append((local, path))
    frozen = FrozenDependencies(files=tuple(pairs), target=Target(PY, "cp", (HOST_PLATFORM,)), pins=(), bootstrap=())
    out = tmp_path / "crafted-bundle"
    build(load_spec(make_spec()), out=out, key=key.key, chunk_size=4096, dependencies=frozen)
    return out


def _target_bytes() -> bytes:
    return Target(PY, "cp", (HOST_PLATFORM,)).to_bytes()


@pytest.mark.parametrize("lock", [
    b"--index-url https://example.invalid/simple\n",
    b"--find-links https://example.invalid/\ngsdemo-pure==1.0 --hash=sha256:" + b"0" * 64 + b"\n",
    b"-e /tmp/somewhere\n",
    b"gsdemo-pure==1.0\n",
    b"gsdemo-pure>=1.0 --hash=sha256:" + b"0" * 64 + b"\n",
])
def test_rejects_lock_that_is_not_hash_pinned(tmp_path: Path, make_key, make_trust, make_spec, lock: bytes) -> None:
    key = make_key("release")
    bundle = _crafted_bundle(tmp_path, key, make_spec, {TARGET: _target_bytes(), LOCK: lock})
    prefix = tmp_path / "prefix"
    result = run("install", bundle, "--trust", make_trust(key), "--prefix", prefix)
    assert result.exit_code == 6, result.output
    assert "is not a hash-pinned requirement" in result.stderr
    assert not prefix.exists()


def test_rejects_unexpected_file_in_dependencies(tmp_path: Path, make_key, make_trust, make_spec) -> None:
    key = make_key("release")
    bundle = _crafted_bundle(tmp_path, key, make_spec, {TARGET: _target_bytes(), LOCK: b"",
                                                        "dependencies/wheels/setup.py": b"print('hi')\n"})
    prefix = tmp_path / "prefix"
    result = run("install", bundle, "--trust", make_trust(key), "--prefix", prefix)
    assert result.exit_code == 6, result.output
    assert "unexpected file 'dependencies/wheels/setup.py'" in result.stderr
    assert not prefix.exists()


def test_rejects_lock_pin_without_a_bundled_wheel(tmp_path: Path, make_key, make_trust, make_spec) -> None:
    key = make_key("release")
    lock = b"requests==2.0 \\\n    --hash=sha256:" + b"a" * 64 + b"\n"
    bundle = _crafted_bundle(tmp_path, key, make_spec, {TARGET: _target_bytes(), LOCK: lock})
    prefix = tmp_path / "prefix"
    result = run("install", bundle, "--trust", make_trust(key), "--prefix", prefix)
    assert result.exit_code == 6, result.output
    assert "pins requests==2.0, but the bundle has no wheel for it" in result.stderr
    assert not prefix.exists()


def test_lock_round_trips_with_comments_and_continuations() -> None:
    text = (b"# header\n\nalpha==1.0 \\\n    --hash=sha256:" + b"1" * 64 + b" \\\n    --hash=sha256:" + b"2" * 64
            + b"\nBeta_Pkg==2.0+local --hash=sha256:" + b"3" * 64 + b"\n")
    pins = parse_lock(text, source="x.lock")
    assert [(p.name, p.version, len(p.hashes)) for p in pins] == [("alpha", "1.0", 2), ("beta-pkg", "2.0+local", 1)]
    with pytest.raises(UnsafeContentError, match="pins a package twice"):
        parse_lock(text + b"alpha==1.1 --hash=sha256:" + b"4" * 64 + b"\n", source="x.lock")


@pytest.mark.slow  # creates two venvs
def test_compile_flag_decides_whether_the_venv_gets_bytecode(tmp_path: Path, shared: dict[str, Path]) -> None:
    """`--compile` compiles the venv's site-packages (the default leaves it to the first import)."""
    for flag, want in ((None, False), ("--compile", True)):
        prefix = tmp_path / f"prefix-{want}"
        args = ["install", shared["1.0.0"], "--trust", shared["trust"], "--prefix", prefix, *([flag] if flag else [])]
        result = run(*args)
        assert result.exit_code == 0, result.output
        site = prefix / "demo" / "1.0.0" / "venv" / "lib" / f"python{PY}" / "site-packages"
        assert bool(list(site.glob("gsdemo_pure/__pycache__/*.pyc"))) is want, flag
        assert run("install", shared["1.0.0"], "--trust", shared["trust"], "--prefix", prefix,
                   "--allow-reinstall").exit_code == 0  # the compiled venv is adopted as it is
