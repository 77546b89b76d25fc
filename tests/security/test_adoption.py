"""Class 5 of issue 13: nothing unverified is adopted, and the prefix is checked like ssh's StrictModes
(docs/format.md, "Install layout"; docs/site-admin.md).

A ``PREFIX/<name>/<version>/`` whose ``receipt.json`` carried the right (public) manifest digest used to
be adopted as "already installed" and made current, serving whatever files it held. Now an existing
version directory is adopted only if it is exactly what this install would write (files, sizes,
hashes, modes, owners, nothing extra, the kept manifest and signatures byte for byte, the venv against
its wheels); otherwise exit 3 naming the first path that differs, and nothing changes. A prefix,
bundle home or host state directory that is a symlink, writable by group or others, or owned by
another user, and an ancestor that another user could rename, is refused with exit 7 naming it.

Tests run as root: another user is simulated by chown to an unused uid.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from attack_site import NEXT_FILES, Site, Template
from gapship_testing import run, run_json
from hostile import litter, snapshot

OTHER_UID = 4242  # no such user here: "someone else"
NEXT = "3.0.0"


@pytest.fixture(scope="session")
def genuine(tmp_path_factory: pytest.TempPathFactory, template: Template) -> Path:
    """A genuine install of the next bundle (3.0.0), made elsewhere: the attacker's starting point."""
    prefix = tmp_path_factory.mktemp("genuine") / "prefix"
    code, out = run_json("install", template.next_bundle, "--trust", template.trust, "--prefix", prefix)
    assert code == 0, out
    return prefix / "demo" / NEXT


def _plant(site: Site, genuine: Path) -> Path:
    planted = site.home / NEXT
    shutil.copytree(genuine, planted, symlinks=True)
    return planted


def _writable(path: Path) -> None:
    path.chmod(stat.S_IMODE(path.lstat().st_mode) | 0o200)


def _swap_bytes(planted: Path) -> None:
    target = planted / "models/tiny/w.bin"
    _writable(target)
    target.write_bytes(b"evil" * (len(NEXT_FILES["w.bin"]) // 4))  # same size, other bytes


def _extra_file(planted: Path) -> None:
    (planted / "models/tiny/loader.py").write_bytes(b"import os; os.system('id')\n")


def _extra_pth(planted: Path) -> None:
    (planted / "models/tiny/evil.pth").write_bytes(b"import os\n")


def _missing_file(planted: Path) -> None:
    (planted / "models/tiny/config.json").unlink()


def _file_mode(planted: Path) -> None:
    (planted / "models/tiny/w.bin").chmod(0o755)


def _world_writable_dir(planted: Path) -> None:
    (planted / "models/tiny").chmod(0o777)


def _symlinked_file(planted: Path) -> None:
    target = planted / "models/tiny/w.bin"
    elsewhere = planted.parent.parent.parent / "served-from-here.bin"
    elsewhere.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(elsewhere)


def _hardlinked_file(planted: Path) -> None:
    os.link(planted / "models/tiny/w.bin", planted.parent.parent.parent / "a-second-name.bin")


def _other_owner(planted: Path) -> None:
    os.chown(planted / "models/tiny/w.bin", OTHER_UID, OTHER_UID)


def _manifest_copy(planted: Path) -> None:
    copy = planted / "manifest.json"
    _writable(copy)
    copy.write_bytes(copy.read_bytes().replace(b'"3.0.0"', b'"3.0.0" '))


def _extra_signature(planted: Path) -> None:
    (planted / "signatures" / "planted.ed25519.sig").write_bytes(b"\0" * 64)


def _receipt_site(planted: Path) -> None:
    receipt = planted / "receipt.json"
    data = json.loads(receipt.read_bytes())
    data["site"] = {"site_id": "somewhere-else"}
    _writable(receipt)
    receipt.write_bytes(json.dumps(data).encode())


def _safeguards_writable(planted: Path) -> None:
    (planted / "safeguards").chmod(0o755)


def _fifo(planted: Path) -> None:
    os.mkfifo(planted / "models/tiny/pipe")


# tamper -> (how, the path the refusal names, words in the message)
TAMPERS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "same-size-other-bytes": (_swap_bytes, "models/tiny/w.bin", "does not match its sha256 hash"),
    "extra-file": (_extra_file, "models/tiny/loader.py", "is not part of this install"),
    "extra-pth": (_extra_pth, "models/tiny/evil.pth", "is not part of this install"),
    "missing-file": (_missing_file, "models/tiny/config.json", "is missing"),
    "file-mode": (_file_mode, "models/tiny/w.bin", "has mode 755, not 644"),
    "world-writable-dir": (_world_writable_dir, "models/tiny", "has mode 777, not 755"),
    "symlinked-file": (_symlinked_file, "models/tiny/w.bin", "is a symlink, not a regular file"),
    "hardlinked-file": (_hardlinked_file, "models/tiny/w.bin", "has 2 hard links"),
    "other-owner": (_other_owner, "models/tiny/w.bin", f"is owned by uid {OTHER_UID}"),
    "manifest-copy": (_manifest_copy, "manifest.json", "is"),
    "extra-signature": (_extra_signature, "signatures/planted.ed25519.sig", "is not one of the bundle's"),
    "receipt-site": (_receipt_site, "receipt.json", "records another site"),
    "safeguards-writable": (_safeguards_writable, "safeguards", "has mode 755, not 555"),
    "fifo": (_fifo, "models/tiny/pipe", "is not part of this install"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_planted_version_directory_with_public_receipt_is_not_adopted(site: Site, genuine: Path,
                                                                      tamper: str) -> None:
    """A planted PREFIX/demo/3.0.0 with the genuine receipt (the digest is public) and one thing
    changed: exit 3 naming that path; current stays 1.0.0 and the planted directory is left as
    evidence. On main the install answered "already-installed" and switched current to it."""
    how, rel, words = TAMPERS[tamper]
    planted = _plant(site, genuine)
    how(planted)
    error = site.assert_refused(site.next_bundle, code=3, needles=(str(planted / rel), words, "refusing to adopt"),
                                subject=str(planted / rel), next_run=False)
    assert error["hint"] and "move it away" in error["hint"]
    _move_away(planted)
    site.assert_next_run_succeeds()


def _move_away(planted: Path) -> None:
    for dirpath, _dirs, _files in os.walk(planted):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(planted)


def test_genuine_version_directory_is_adopted_as_already_installed(site: Site, genuine: Path) -> None:
    """The genuine case still works: a version directory that is exactly what the install writes (an
    install interrupted between the rename and the switch, or a copy of a genuine one) is adopted,
    status "already-installed", and becomes current."""
    _plant(site, genuine)
    code, out = site.install(site.next_bundle)
    assert code == 0, out
    assert out["status"] == "already-installed"
    assert (site.home / "current").readlink() == Path(NEXT)
    assert litter(site.home) == []


def test_reinstall_of_the_current_version_checks_it_again(site: Site) -> None:
    """--allow-reinstall of the active version: adopted when intact; refused, exit 3, once a file of
    it was changed, and current is left as it was (gapship does not repair what is serving)."""
    code, out = run_json(*site.args("install", site.previous_bundle), "--allow-reinstall")
    assert code == 0 and out["status"] == "already-installed", out
    weights = site.home / "1.0.0/models/tiny/weights.bin"
    data = weights.read_bytes()
    _writable(weights)
    weights.write_bytes(data[:-1] + b"X")
    before = snapshot(site.prefix)
    code, out = run_json(*site.args("install", site.previous_bundle), "--allow-reinstall")
    assert code == 3, out
    assert out["error"]["subject"] == str(weights)
    assert snapshot(site.prefix) == before


def test_planted_directory_already_current_is_refused_on_reinstall(site: Site, genuine: Path) -> None:
    """The planted 3.0.0 was made current behind gapship's back; a reinstall of 3.0.0 does not bless
    it: exit 3 naming the planted file, nothing changed (the admin must move it away)."""
    planted = _plant(site, genuine)
    _swap_bytes(planted)
    current = site.home / "current"
    current.unlink()
    current.symlink_to(NEXT)
    before = snapshot(site.prefix)
    code, out = run_json(*site.args("install", site.next_bundle), "--allow-reinstall")
    assert code == 3, out
    assert out["error"]["subject"] == str(planted / "models/tiny/w.bin")
    assert snapshot(site.prefix) == before


def test_symlinked_version_directory_is_not_adopted(site: Site, genuine: Path) -> None:
    """PREFIX/demo/3.0.0 is a symlink to a genuine-looking tree elsewhere: never followed, exit 3."""
    elsewhere = site.tmp / "elsewhere-3.0.0"
    shutil.copytree(genuine, elsewhere, symlinks=True)
    (site.home / NEXT).symlink_to(elsewhere)
    site.assert_refused(site.next_bundle, code=3, needles=(str(site.home / NEXT), "symlink"),
                        subject=str(site.home / NEXT), next_run=False)


def test_planted_bytecode_cache_is_removed_on_adoption(site: Site, genuine: Path) -> None:
    """An interpreter cache the manifest does not list (``__pycache__/*.pyc``) is unverified code:
    not a reason to refuse a genuine directory, but removed when it is adopted."""
    planted = _plant(site, genuine)
    cache = planted / "models/tiny/__pycache__"
    cache.mkdir()
    (cache / "loader.cpython-311.pyc").write_bytes(b"\x00" * 32)
    code, out = site.install(site.next_bundle)
    assert code == 0 and out["status"] == "already-installed", out
    assert not cache.exists()


# -- StrictModes: the prefix, the bundle home, the host state directory, the ancestors ---------------------


def test_symlinked_bundle_home_is_refused_and_its_target_untouched(site: Site, tmp_path: Path) -> None:
    """PREFIX/demo is a symlink to a directory elsewhere that holds a `.staging-*` directory: on main
    the litter clean-up followed the link and deleted it. Now: exit 7 naming PREFIX/demo."""
    elsewhere = tmp_path / "someone-elses"
    site.home.rename(elsewhere)
    (elsewhere / ".staging-precious").mkdir()
    (elsewhere / ".staging-precious" / "data").write_bytes(b"not gapship's\n")
    site.home.symlink_to(elsewhere)
    before = snapshot(elsewhere)
    code, out = site.install(site.next_bundle)
    assert code == 7, out
    assert out["error"]["subject"] == str(site.home) and "symlink" in out["error"]["message"], out
    assert snapshot(elsewhere) == before


@pytest.mark.parametrize("what", ["prefix", "state-dir"])
def test_symlinked_prefix_or_state_dir_is_refused(site: Site, tmp_path: Path, what: str) -> None:
    """The prefix itself, or PREFIX/.gapship, is a symlink: exit 7 naming it."""
    link = site.prefix if what == "prefix" else site.prefix / ".gapship"
    real = tmp_path / f"real-{what}"
    link.rename(real)
    link.symlink_to(real)
    before = snapshot(real)
    args = ["install", site.next_bundle, "--trust", site.trust, "--prefix", site.prefix]
    code, out = run_json(*args)
    assert code == 7, out
    assert out["error"]["subject"] == str(link) and "symlink" in out["error"]["message"], out
    assert snapshot(real) == before


_DIRS = {"prefix": lambda s: s.prefix, "bundle-home": lambda s: s.home, "state-dir": lambda s: s.prefix / ".gapship"}


@pytest.mark.parametrize("fault", ["group-writable", "world-writable", "other-owner"])
@pytest.mark.parametrize("what", list(_DIRS))
def test_unsafe_prefix_directory_is_refused(site: Site, what: str, fault: str) -> None:
    """ssh's StrictModes for the three directories gapship writes into: writable by group or others,
    or owned by another user, is refused with exit 7 naming the directory; once fixed, the install
    goes through."""
    path: Path = _DIRS[what](site)
    mode = stat.S_IMODE(path.stat().st_mode)
    if fault == "other-owner":
        os.chown(path, OTHER_UID, OTHER_UID)
    else:
        path.chmod(mode | (0o020 if fault == "group-writable" else 0o002))
    words = f"owned by uid {OTHER_UID}" if fault == "other-owner" else "writable by"
    site.assert_refused(site.next_bundle, code=7, needles=(str(path), words), subject=str(path), next_run=False)
    os.chown(path, 0, 0)
    path.chmod(mode)
    site.assert_next_run_succeeds()


@pytest.mark.parametrize("fault", ["world-writable", "other-owner"])
def test_unsafe_ancestor_of_the_prefix_is_refused(site: Site, fault: str) -> None:
    """A directory above the prefix that another user could rename entries of: exit 7 naming it."""
    ancestor = site.prefix.parent
    mode = stat.S_IMODE(ancestor.stat().st_mode)
    if fault == "other-owner":
        os.chown(ancestor, OTHER_UID, OTHER_UID)
    else:
        ancestor.chmod(0o777)
    try:
        site.assert_refused(site.next_bundle, code=7, needles=(str(ancestor),), subject=str(ancestor),
                            next_run=False)
    finally:
        os.chown(ancestor, 0, 0)
        ancestor.chmod(mode)
    site.assert_next_run_succeeds()


def test_sticky_world_writable_ancestor_is_accepted(site: Site) -> None:
    """Like /tmp: writable by all but sticky, so only an entry's owner can rename it. Accepted."""
    ancestor = site.prefix.parent
    mode = stat.S_IMODE(ancestor.stat().st_mode)
    ancestor.chmod(0o1777)
    try:
        site.assert_next_run_succeeds()
    finally:
        ancestor.chmod(mode)


def test_new_prefix_under_umask_000_is_not_world_writable(site: Site, tmp_path: Path) -> None:
    """A fresh prefix made under umask 000 gets 0755 directories, so the next install accepts it."""
    prefix = tmp_path / "fresh" / "prefix"
    old = os.umask(0)
    try:
        code, out = run_json("install", site.previous_bundle, "--trust", site.trust, "--prefix", prefix)
    finally:
        os.umask(old)
    assert code == 0, out
    for path in (tmp_path / "fresh", prefix, prefix / "demo", prefix / ".gapship"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    code, out = run_json("install", site.next_bundle, "--trust", site.trust, "--prefix", prefix)
    assert code == 0, out


def test_status_does_not_follow_a_symlinked_home_or_receipt(site: Site, tmp_path: Path) -> None:
    """status walks the prefix without following a symlinked bundle home, and does not read a receipt
    that is a symlink (here to a JSON file gapship never wrote)."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(site.home, elsewhere, symlinks=True)
    (site.prefix / "linked").symlink_to(elsewhere)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"manifest_digest": "sha256:secret", "installed_by": "secret"}))
    receipt = site.home / "1.0.0" / "receipt.json"
    receipt.unlink()
    receipt.symlink_to(secret)
    result = run("status", "--prefix", site.prefix, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [b["name"] for b in out["bundles"]] == ["demo"]
    (version,) = out["bundles"][0]["versions"]
    assert "problem" in version and "secret" not in result.stdout


# -- the venv: checked against the verified wheels' RECORD files ------------------------------------------


@pytest.fixture(scope="module")
def deps_install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A bundle with dependencies (two small wheels), installed once: (bundle, trust, prefix)."""
    from deps_testing import add_dependencies, build_cli, wheelhouse, write_spec
    from gapship.bundler.keys import keygen

    house = wheelhouse(tmp_path_factory)
    root = tmp_path_factory.mktemp("deps-adoption")
    private, public, _ = keygen("release", root / "keys")
    (root / "trust").mkdir()
    (root / "trust" / public.name).write_bytes(public.read_bytes())
    spec = add_dependencies(write_spec(root / "spec"), requirements="gsdemo-pure\n", find_links=(house.wheels,))
    build_cli(spec, root / "bundle", private)
    prefix = root / "prefix"
    code, out = run_json("install", root / "bundle", "--trust", root / "trust", "--prefix", prefix)
    assert code == 0, out
    return root / "bundle", root / "trust", prefix


def _site_packages(version_dir: Path) -> Path:
    (found,) = (version_dir / "venv" / "lib").glob("python*/site-packages")
    return found


def _venv_pth(v: Path) -> Path:
    path = _site_packages(v) / "zz-evil.pth"
    path.write_bytes(b"import os; os.system('id')\n")
    return path


def _venv_module(v: Path) -> Path:
    path = _site_packages(v) / "gsdemo_pure" / "__init__.py"
    path.write_bytes(b'VALUE = "evil"\n')
    return path


def _venv_sitecustomize(v: Path) -> Path:
    path = _site_packages(v) / "sitecustomize.py"
    path.write_bytes(b"import os\n")
    return path


def _venv_system_site_packages(v: Path) -> Path:
    path = v / "venv" / "pyvenv.cfg"
    path.write_text(path.read_text().replace("include-system-site-packages = false",
                                             "include-system-site-packages = true"))
    return path


def _venv_interpreter(v: Path) -> Path:
    path = v / "venv" / "bin" / "python"
    path.unlink()
    path.symlink_to("/bin/sh")
    return path


def _venv_dist_info_record(v: Path) -> Path:
    """A new module listed in the installed RECORD: the installed RECORD is not what is trusted."""
    (info,) = _site_packages(v).glob("gsdemo_pure-*.dist-info")
    path = _site_packages(v) / "gsdemo_pure" / "extra.py"
    path.write_bytes(b"import os\n")
    with (info / "RECORD").open("a") as record:
        record.write("gsdemo_pure/extra.py,,\n")
    return path


VENV_TAMPERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "pth-file": (_venv_pth, "is not a file of the bundle's wheels"),
    "changed-module": (_venv_module, "does not match the hash in its wheel's RECORD"),
    "sitecustomize": (_venv_sitecustomize, "is not a file of the bundle's wheels"),
    "system-site-packages": (_venv_system_site_packages, "include-system-site-packages = false"),
    "other-interpreter": (_venv_interpreter, "does not lead to the planned interpreter"),
    "listed-in-installed-record": (_venv_dist_info_record, "is not a file of the bundle's wheels"),
}


@pytest.mark.slow  # builds wheels, a venv, and pip-installs into it (once for the module)
@pytest.mark.parametrize("tamper", [None, *VENV_TAMPERS])
def test_planted_venv_is_not_adopted(deps_install: tuple[Path, Path, Path], tmp_path: Path,
                                     tamper: str | None) -> None:
    """The venv is not in the manifest (it is made at install time), so it is checked against the
    verified wheels it was made from: a .pth or sitecustomize added, a module changed, a file listed
    only in the installed RECORD, system site-packages switched on, or python pointing elsewhere is
    refused, exit 3 naming it. The genuine venv (tamper None) is adopted as already installed."""
    bundle, trust, installed = deps_install
    prefix = tmp_path / "prefix"
    shutil.copytree(installed, prefix, symlinks=True)
    version = prefix / "demo" / "1.0.0"
    args = ("install", bundle, "--trust", trust, "--prefix", prefix, "--allow-reinstall")
    if tamper is None:
        code, out = run_json(*args)
        assert code == 0 and out["status"] == "already-installed", out
        return
    how, words = VENV_TAMPERS[tamper]
    bad = how(version)
    before = snapshot(prefix)
    code, out = run_json(*args)
    assert code == 3, out
    assert out["error"]["subject"] == str(bad) and words in out["error"]["message"], out
    assert snapshot(prefix) == before


@pytest.mark.slow  # creates a venv and pip-installs into it
def test_venv_made_under_umask_000_is_not_world_writable(deps_install: tuple[Path, Path, Path],
                                                         tmp_path: Path) -> None:
    """Under umask 000 the venv used to be made world-writable (anyone could then add a .pth to the
    serving Python); now venv and pip run under umask 022, and the venv is adopted on a reinstall."""
    bundle, trust, _ = deps_install
    prefix = tmp_path / "prefix"
    old = os.umask(0)
    try:
        code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix)
    finally:
        os.umask(old)
    assert code == 0, out
    venv = prefix / "demo" / "1.0.0" / "venv"
    loose = [p for p in [venv, *venv.rglob("*")] if not p.is_symlink() and p.lstat().st_mode & 0o022]
    assert loose == []
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", prefix, "--allow-reinstall")
    assert code == 0 and out["status"] == "already-installed", out
