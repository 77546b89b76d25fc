"""Freezing [dependencies]: wheels for the target, a hash-pinned lock, target.json; refusals."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from deps_testing import (
    FOREIGN_ARCH, FOREIGN_PLATFORM, HOST_PLATFORM, PY, Wheelhouse, add_dependencies, clean_env, make_sdist, wheelhouse,
)
from gapship.bundler.deps.selfwheel import wheel_from_installed
from gapship.bundler.spec import load_spec
from gapship.installer.deploy.deps import LOCK, TARGET, parse_lock
from gapship.installer.errors import UsageError
from gapship.installer.formats.manifest import Manifest
from gapship_testing import run


@pytest.fixture(scope="session")
def house(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    return wheelhouse(tmp_path_factory)


def _build(spec: Path, key, out: Path, *extra: str):
    return run("build", spec, "--out", out, "--key", key.private, "--chunk-size", "4KiB", *extra)


def _dependency_files(bundle: Path) -> dict[str, int]:
    m = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    (comp,) = [c for c in m.components if c.kind == "dependencies"]
    return {f.path: f.size for f in comp.files}


def _payload_file(bundle: Path, path: str) -> bytes:
    """A file's bytes from the concatenated chunks (what `cat chunks/* | tar -x` sees)."""
    m = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    payload = b"".join((bundle / "chunks" / c.name).read_bytes() for c in m.chunks)
    (f,) = [f for f in m.files() if f.path == path]
    return payload[f.offset:f.end]


@pytest.mark.slow  # runs pip
def test_offline_build_bundles_target_wheels_with_a_hash_pinned_lock(tmp_path: Path, house: Wheelhouse,
                                                                      make_key, make_spec) -> None:
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements="gsdemo-pure\n", find_links=(house.wheels,))
    result = _build(spec, key, tmp_path / "b", "--offline")
    assert result.exit_code == 0, result.output

    files = _dependency_files(tmp_path / "b")
    wheel_names = {"gsdemo_pure-1.0-py3-none-any.whl", house.plat(HOST_PLATFORM).name}
    assert set(files) == {TARGET, LOCK, *(f"dependencies/wheels/{n}" for n in wheel_names)}
    pins = {p.name: p for p in parse_lock(_payload_file(tmp_path / "b", LOCK), source=LOCK)}
    assert set(pins) == {"gsdemo-pure", "gsdemo-plat"}  # the dependency came with it
    for name in wheel_names:
        wheel = _payload_file(tmp_path / "b", f"dependencies/wheels/{name}")
        assert wheel == (house.wheels / name).read_bytes()
        dist = name.split("-")[0].replace("_", "-")
        assert pins[dist].hashes == (hashlib.sha256(wheel).hexdigest(),)
    target = json.loads(_payload_file(tmp_path / "b", TARGET))
    assert target["python"] == PY and target["platforms"] == [HOST_PLATFORM] and target["implementation"] == "cp"


def test_build_picks_the_wheel_for_the_target_platform_not_the_build_host(tmp_path: Path, house: Wheelhouse,
                                                                          make_key, make_spec) -> None:
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements="gsdemo-plat\n", platforms=(FOREIGN_PLATFORM,),
                            find_links=(house.wheels,))
    result = _build(spec, key, tmp_path / "b", "--offline")
    assert result.exit_code == 0, result.output
    assert f"dependencies/wheels/{house.plat(FOREIGN_PLATFORM).name}" in _dependency_files(tmp_path / "b")
    assert f"dependencies/wheels/{house.plat(HOST_PLATFORM).name}" not in _dependency_files(tmp_path / "b")


def test_rejects_wheels_from_the_build_hosts_pip_config(tmp_path: Path, house: Wheelhouse, make_key, make_spec,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec's find_links lack gsdemo-plat; the build host's pip environment and config offer it."""
    only_pure = tmp_path / "only-pure"
    only_pure.mkdir()
    (only_pure / house.pure.name).write_bytes(house.pure.read_bytes())
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nfind-links = {house.wheels}\n")
    monkeypatch.setenv("PIP_FIND_LINKS", str(house.wheels))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements="gsdemo-pure\n", find_links=(only_pure,))
    result = _build(spec, key, tmp_path / "b", "--offline")
    assert result.exit_code == 2, result.output
    assert "gsdemo-plat" in result.stderr
    assert not (tmp_path / "b").exists()


def test_rejects_sdist_only_package_naming_it(tmp_path: Path, house: Wheelhouse, make_key, make_spec) -> None:
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements="gsdemo-pure\ngsdemo-src\n",
                            find_links=(house.wheels, house.sdists))
    result = _build(spec, key, tmp_path / "b", "--offline")
    assert result.exit_code == 2, result.output
    assert "gsdemo-src is available only as a source distribution (gsdemo_src-1.0.tar.gz)" in result.stderr
    assert "build_sdists_on_build_host" in result.stderr
    assert not house.marker.exists()  # no build code ran
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("line", ["gsdemo-src @ file:///nowhere/gsdemo_src-1.0.tar.gz", "./gsdemo_src-1.0.tar.gz",
                                  "gsdemo-src @ git+https://example.invalid/gsdemo-src",
                                  "gsdemo-pure @ https://example.invalid/gsdemo_pure-1.0-py3-none-any.whl",
                                  "gsdemo-pure --config-settings=editable_mode=compat"])
def test_rejects_direct_source_or_url_reference_before_running_pip(tmp_path: Path, make_key, make_spec,
                                                                   line: str) -> None:
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements=f"{line}\n", find_links=(tmp_path,))
    result = _build(spec, key, tmp_path / "b", "--offline")
    assert result.exit_code == 2, result.output
    assert "requirements.txt line 1" in result.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("line", ["--index-url https://example.invalid/simple", "-f https://example.invalid/",
                                  "--extra-index-url=https://example.invalid/", "-r other.txt", "-e ."])
def test_rejects_source_options_inside_requirements(tmp_path: Path, make_key, make_spec, line: str) -> None:
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements=f"gsdemo-pure\n{line}\n", find_links=(tmp_path,))
    result = _build(spec, key, tmp_path / "b", "--offline")
    assert result.exit_code == 2, result.output
    assert "requirements.txt line 2: option" in result.stderr
    assert "is not allowed" in result.stderr


@pytest.mark.slow  # runs pip
def test_builds_sdist_into_a_wheel_only_with_the_opt_in(tmp_path: Path, house: Wheelhouse, make_key,
                                                        make_spec) -> None:
    marker = tmp_path / "ran"
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    make_sdist(sdists, "gsdemo_src", "1.0", marker)
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements="gsdemo-src\n", find_links=(sdists,),
                            extra="build_sdists_on_build_host = true\n")
    result = _build(spec, key, tmp_path / "b", "--offline")
    assert result.exit_code == 0, result.output
    assert marker.exists()
    wheel = _payload_file(tmp_path / "b", "dependencies/wheels/gsdemo_src-1.0-py3-none-any.whl")
    (tmp_path / "w.whl").write_bytes(wheel)
    with zipfile.ZipFile(tmp_path / "w.whl") as zf:
        assert zf.read("gsdemo_src/__init__.py") == b"VALUE = 'built from sdist'\n"


def test_rejects_offline_build_without_find_links(tmp_path: Path, make_key, make_spec) -> None:
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements="gsdemo-pure\n")
    result = _build(spec, key, tmp_path / "b", "--offline")
    assert result.exit_code == 2
    assert "--offline needs at least one dependencies.find_links folder" in result.stderr


@pytest.mark.parametrize(("table", "message"), [
    ('requirements = "r.txt"\npython = "3"\nplatforms = ["linux_x86_64"]\n', "must be a Python version"),
    ('requirements = "r.txt"\npython = "3.11"\nplatforms = []\n', "non-empty list"),
    ('requirements = "r.txt"\npython = "3.11"\nplatforms = ["Linux x86"]\n', "is not a platform tag"),
    ('requirements = "r.txt"\npython = "3.11"\nplatforms = ["any"]\nsurprise = 1\n', "unknown key 'surprise'"),
    ('requirements = "r.txt"\npython = "3.11"\nplatforms = ["any"]\n', "is not a platform tag"),
    ('requirements = "r.txt"\npython = "3.11"\nplatforms = ["linux_x86_64"]\nbuild_sdists_on_build_host = "yes"\n',
     "must be true or false"),
])
def test_rejects_malformed_dependencies_table(make_spec, table: str, message: str) -> None:
    spec = make_spec()
    with spec.open("a") as f:
        f.write(f"\n[dependencies]\n{table}")
    with pytest.raises(UsageError, match=message):
        load_spec(spec)


def test_pylock_selects_packages_by_target_marker_and_checks_hashes(tmp_path: Path, house: Wheelhouse,
                                                                   make_key, make_spec) -> None:
    plat = house.plat(FOREIGN_PLATFORM)
    digest = hashlib.sha256(plat.read_bytes()).hexdigest()
    lock = f"""\
lock-version = "1.0"
created-by = "hand"

[[packages]]
name = "gsdemo-plat"
version = "1.0"
marker = "platform_machine == '{FOREIGN_ARCH}'"
wheels = [{{ name = "{plat.name}", path = "{plat}", hashes = {{ sha256 = "{digest}" }} }}]

[[packages]]
name = "only-on-windows"
version = "1.0"
marker = "sys_platform == 'win32'"
wheels = [
  {{ name = "only_on_windows-1.0-py3-none-any.whl", url = "https://x.invalid/y.whl", hashes = {{ sha256 = "{'0' * 64}" }} }},
]
"""
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements=lock, requirements_name="pylock.toml",
                            platforms=(FOREIGN_PLATFORM,), find_links=(house.wheels,))
    result = _build(spec, key, tmp_path / "b", "--offline")
    assert result.exit_code == 0, result.output
    assert set(_dependency_files(tmp_path / "b")) == {TARGET, LOCK, f"dependencies/wheels/{plat.name}"}

    wrong = add_dependencies(make_spec(), requirements=lock.replace(digest, "1" * 64),
                             requirements_name="pylock.toml", platforms=(FOREIGN_PLATFORM,),
                             find_links=(house.wheels,))
    result = _build(wrong, key, tmp_path / "c", "--offline")
    assert result.exit_code == 2, result.output
    assert f"gsdemo-plat==1.0 ({plat.name}) matches no hash that pylock.toml lists for it" in result.stderr


def test_pylock_rejects_sdist_only_package(tmp_path: Path, make_key, make_spec) -> None:
    lock = ('lock-version = "1.0"\n\n[[packages]]\nname = "gsdemo-src"\nversion = "1.0"\n'
            'sdist = { url = "https://example.invalid/gsdemo_src-1.0.tar.gz", hashes = { sha256 = "' + "0" * 64
            + '" } }\n')
    key = make_key("release")
    spec = add_dependencies(make_spec(), requirements=lock, requirements_name="pylock.toml", find_links=(tmp_path,))
    result = _build(spec, key, tmp_path / "b", "--offline")
    assert result.exit_code == 2
    assert "gsdemo-src is locked only as sdist" in result.stderr


def test_wheel_from_installed_distribution_is_reproducible_and_complete(tmp_path: Path) -> None:
    first = wheel_from_installed("gapship", tmp_path / "a")
    second = wheel_from_installed("gapship", tmp_path / "b")
    assert first.name == "gapship-0.1.0-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        names = set(zf.namelist())
        assert "gapship/installer/deploy/deps.py" in names and "gapship/bundler/deps/freeze.py" in names
        assert "gapship-0.1.0.dist-info/entry_points.txt" in names
        assert not [n for n in names if n.endswith(".pyc") or "direct_url" in n or n.startswith("..")]
        assert zf.testzip() is None
