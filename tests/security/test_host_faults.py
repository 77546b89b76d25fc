"""Faults on the host (../shared/guides/security.md, "Faults on the host"): a full disk or quota, a
prefix that cannot be written, the process killed with SIGKILL at several points, a second install
running at the same time. After each: 1.0.0 still active and intact, no staging litter once the next
run is done, and the next run succeeds.

The faults are injected from outside the installer: tests/security/harness.py runs the real CLI in a
subprocess with an os function hooked or a resource limit set; tests/security/ns_scenario.py runs it
inside ``unshare -rm`` on a small tmpfs or a read-only bind mount.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from attack_site import PREVIOUS_FILES, Site, build_real_bundle, run_harness, victim_files
from gapship_testing import noise, run_json
from hostile import Payload, craft, litter, pax_header, snapshot

NS_SCENARIO = Path(__file__).with_name("ns_scenario.py")


def _assert_victim_active(site: Site) -> None:
    current = site.home / "current"
    assert str(current.readlink()) == "2.0.0"
    for rel, data in victim_files(b"one").items():
        assert (current / "models/tiny" / rel).read_bytes() == data
    assert litter(site.home) == []


def _assert_previous_served(site: Site) -> None:
    """``current`` still points at 1.0.0 and serves its exact files (litter may be present)."""
    current = site.home / "current"
    assert str(current.readlink()) == "1.0.0"
    for rel, data in PREVIOUS_FILES.items():
        assert (current / "models/tiny" / rel).read_bytes() == data


def _finished(result: Any) -> subprocess.CompletedProcess[str]:
    assert isinstance(result, subprocess.CompletedProcess)
    return result


# -- SIGKILL -----------------------------------------------------------------------------------------

KILL_POINTS = [
    # fault, what is left behind before the next run
    ("kill-first-write", "staging"),
    ("kill-before-rename", "staging"),
    ("kill-after-rename", "version"),
    ("kill-before-switch", "link"),
]


@pytest.mark.parametrize("case", KILL_POINTS, ids=lambda c: c[0])
def test_survives_sigkill(site: Site, victim: Path, case: tuple[str, str]) -> None:
    fault, left = case
    result = _finished(run_harness(fault, "", site, victim))
    assert result.returncode == -signal.SIGKILL, result
    # what the killed process left: never a current pointing at a half-written version
    site_litter = litter(site.home)
    _assert_previous_served(site)
    if left == "staging":
        assert [n for n in site_litter if n.startswith(".staging-")], site_litter
        assert not (site.home / "2.0.0").exists()
    elif left == "version":
        assert site_litter == [] and (site.home / "2.0.0" / "receipt.json").is_file()
    else:
        assert [n for n in site_litter if n.startswith(".current-")], site_litter
    # the same command again finishes the job and cleans up
    code, out = site.install(victim)
    assert code == 0, out
    assert out["status"] == ("already-installed" if left in ("version", "link") else "installed")
    _assert_victim_active(site)
    assert (site.home / "1.0.0" / "models/tiny/config.json").is_file()


def test_previous_version_stays_usable_after_sigkill_during_staging(site: Site, victim: Path) -> None:
    """Between the kill and the next run, 1.0.0 is what ``current`` serves, byte for byte."""
    before = snapshot(site.home / "1.0.0")
    result = _finished(run_harness("kill-first-write", "", site, victim))
    assert result.returncode == -signal.SIGKILL
    assert str((site.home / "current").readlink()) == "1.0.0"
    assert snapshot(site.home / "1.0.0") == before


# -- a concurrent install ----------------------------------------------------------------------------


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first install never reached its rename"
        time.sleep(0.02)


@pytest.mark.parametrize("second", ["same-bundle", "other-version"])
def test_rejects_concurrent_second_install(site: Site, victim: Path, tmp_path: Path, second: str) -> None:
    """A first install holds the lock (paused just before its rename); a second install of the same
    bundle, or of another version of the same name, is refused with exit 7 and touches nothing."""
    gate = tmp_path / "gate"
    gate.mkdir()
    first = run_harness("pause-before-rename", str(gate), site, victim, wait=False)
    assert isinstance(first, subprocess.Popen)
    try:
        _wait_for(gate / "paused", first)
        other = victim if second == "same-bundle" else site.next_bundle
        error = site.assert_refused(other, code=7, needles=("busy", ".lock"), subject=str(site.home / ".lock"),
                                    next_run=False, busy=True)
        assert error["kind"] == "environment"
    finally:
        (gate / "release").touch()
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, (stdout, stderr)
    _assert_victim_active(site)
    site.assert_next_run_succeeds()


# -- disk full and quotas ------------------------------------------------------------------------------


def test_survives_file_size_limit_while_writing_data(site: Site, victim: Path) -> None:
    """RLIMIT_FSIZE below the size of weights.bin: EFBIG in the middle of the data (a full quota)."""
    before = snapshot(site.prefix)
    result = _finished(run_harness("rlimit-fsize", "8192", site, victim))
    assert result.returncode == 7, result
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "environment" and "file size limit" in error["message"]
    assert snapshot(site.prefix) == before
    site.assert_previous_intact()
    code, out = site.install(victim)
    assert code == 0, out
    _assert_victim_active(site)


@pytest.fixture(scope="session")
def large_file(tmp_path_factory: pytest.TempPathFactory, template) -> Path:
    """demo 2.0.0 with one 9 MiB file: written by the large-file writer (extract.py, DIRECT_MIN)."""
    base = tmp_path_factory.mktemp("large-file")
    return build_real_bundle(base, template.key, version="2.0.0", files={"weights-large.bin": noise(9 << 20, seed=7)})


def test_survives_file_size_limit_while_writing_a_large_file(site: Site, large_file: Path) -> None:
    """RLIMIT_FSIZE of 4 MiB: EFBIG in the large-file writer's stage, reported like any host error."""
    before = snapshot(site.prefix)
    result = _finished(run_harness("rlimit-fsize", str(4 << 20), site, large_file))
    assert result.returncode == 7, result
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "environment" and "file size limit" in error["message"]
    assert snapshot(site.prefix) == before
    site.assert_previous_intact()


@pytest.fixture(scope="session")
def many_small_files(tmp_path_factory: pytest.TempPathFactory, template) -> Path:
    """demo 2.0.0 with 40 tiny files: every data file is far smaller than its manifest."""
    base = tmp_path_factory.mktemp("small-files")
    files = {f"part-{i:02d}.txt": b"x" * 40 for i in range(40)}
    return build_real_bundle(base, template.key, version="2.0.0", files=files)


def test_survives_file_size_limit_while_writing_records(site: Site, many_small_files: Path) -> None:
    """RLIMIT_FSIZE above every data file but below the manifest copy written beside them: the fault
    hits after the payload, while the receipt and records are written."""
    manifest_size = (many_small_files / "manifest.json").stat().st_size
    assert manifest_size > 2048
    before = snapshot(site.prefix)
    result = _finished(run_harness("rlimit-fsize", "1024", site, many_small_files))
    assert result.returncode == 7, result
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "environment" and str(site.home) in error["message"], error
    assert "\n" not in error["message"]
    assert snapshot(site.prefix) == before
    site.assert_previous_intact()
    code, out = site.install(many_small_files)
    assert code == 0, out


def _unshare(scenario: str, site: Site, previous: Path, bundle: Path) -> dict[str, Any]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"this kernel refuses user+mount namespaces with tmpfs: {probe.stderr.decode().strip()}")
    result = subprocess.run(["unshare", "-rm", sys.executable, str(NS_SCENARIO), scenario, str(site.prefix),
                             str(site.trust), str(previous), str(bundle)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture(scope="session")
def big_bundle(tmp_path_factory: pytest.TempPathFactory, template) -> Path:
    base = tmp_path_factory.mktemp("big-bundle")
    return build_real_bundle(base, template.key, version="2.0.0", files={"weights.bin": os.urandom(1024 * 1024)})


def test_survives_disk_full_on_tmpfs(site: Site, big_bundle: Path, tmp_path: Path) -> None:
    """A 256 KiB tmpfs as the prefix: 1.0.0 fits, the 1 MiB weights do not (ENOSPC)."""
    prefix = tmp_path / "small-disk"
    prefix.mkdir()
    site.prefix = prefix
    report = _unshare("tmpfs-bytes", site, site.previous_bundle, big_bundle)
    assert report["previous"][0] == 0, report
    code, out = report["faulty"]
    assert code == 7, report
    assert out["error"]["kind"] == "environment" and "disk full" in out["error"]["message"], report
    assert report["unchanged"] and report["litter"] == [] and report["current"] == "1.0.0", report
    assert report["next"][0] == 0, report
    assert report["next_litter"] == [] and report["next_current"] == "2.0.0", report
    assert report["previous_files"] == ["config.json", "weights.bin"]


def test_survives_out_of_inodes_while_writing_records(site: Site, victim: Path, tmp_path: Path) -> None:
    """A tmpfs with inodes for the payload's files but not for the receipt and manifest copy."""
    prefix = tmp_path / "few-inodes"
    prefix.mkdir()
    site.prefix = prefix
    report = _unshare("tmpfs-inodes", site, site.previous_bundle, victim)
    assert report["previous"][0] == 0, report
    code, out = report["faulty"]
    assert code == 7, report
    assert out["error"]["kind"] == "environment", report
    assert report["unchanged"] and report["litter"] == [] and report["current"] == "1.0.0", report
    assert report["next"][0] == 0, report
    assert report["next_litter"] == [] and report["next_current"] == "2.0.0", report


# -- a prefix that cannot be written -------------------------------------------------------------------


def test_survives_read_only_prefix(site: Site, victim: Path) -> None:
    """The prefix (1.0.0 installed) is a read-only bind mount: exit 7, nothing changed; once it is
    writable again (outside the namespace), the same install succeeds."""
    report = _unshare("read-only", site, site.previous_bundle, victim)
    code, out = report["faulty"]
    assert code == 7, report
    assert out["error"]["kind"] == "environment" and "Read-only file system" in out["error"]["message"], report
    assert report["unchanged"] and report["litter"] == [] and report["current"] == "1.0.0", report
    site.assert_previous_intact()
    code, out = site.install(victim)
    assert code == 0, out
    _assert_victim_active(site)


def _without_dac_override(site: Site, bundle: Path) -> subprocess.CompletedProcess[str]:
    """Run install as root without CAP_DAC_OVERRIDE (and every other capability), so file modes bind
    root too: tests run as root, where a plain chmod would not deny anything."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv(1) is not installed")
    argv = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--", sys.executable, "-m",
            "gapship.installer", *map(str, site.args("install", bundle)), "--json"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("where", ["bundle-home", "prefix"])
def test_survives_permission_denied_on_prefix(site: Site, victim: Path, where: str) -> None:
    """The bundle's home (1.0.0 installed) or the prefix itself is mode 0555."""
    locked = site.home if where == "bundle-home" else site.prefix
    if where == "prefix":
        shutil.rmtree(site.home)
    before = snapshot(site.prefix)
    os.chmod(locked, 0o555)
    try:
        result = _without_dac_override(site, victim)
    finally:
        os.chmod(locked, 0o755)
    assert result.returncode == 7, result
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "environment" and "ermission denied" in error["message"], error
    assert snapshot(site.prefix) == before
    if where == "bundle-home":
        site.assert_previous_intact()
    code, out = site.install(victim)
    assert code == 0, out
    assert litter(site.home) == []


# -- a host in an odd state ------------------------------------------------------------------------------


def test_rejects_lock_file_replaced_by_symlink(site: Site, victim: Path, tmp_path: Path) -> None:
    """Someone on the host planted PREFIX/demo/.lock as a symlink: never followed, exit 7."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"do not touch\n")
    (site.home / ".lock").unlink()
    (site.home / ".lock").symlink_to(elsewhere)
    site.assert_refused(victim, code=7, needles=(".lock",), next_run=False)
    assert elsewhere.read_bytes() == b"do not touch\n"


def test_rejects_current_that_is_not_a_symlink(site: Site, victim: Path) -> None:
    """PREFIX/demo/current is a real directory (hand-made): refused, not replaced."""
    current = site.home / "current"
    current.unlink()
    current.mkdir()
    (current / "keep.txt").write_bytes(b"hand-made\n")
    before = snapshot(site.prefix)
    code, out = run_json(*site.args("install", victim))
    assert code == 7, out
    assert "current" in out["error"]["message"] and "not a symlink" in out["error"]["message"]
    assert snapshot(site.prefix) == before


def test_refused_first_install_of_a_new_name_leaves_no_trace(site: Site) -> None:
    """The first bundle ever installed under a name is refused mid-stream: the prefix must look as if
    it never ran (no empty PREFIX/<name>/ with a lock file left behind)."""
    payload = Payload()
    payload.add("models/tiny/w.bin", b"weights", header=pax_header("models/tiny/other.bin", 7))
    payload.policy()
    bundle = site.write(craft(payload, name="newcomer"))
    site.assert_refused(bundle, code=6, needles=("differs from the manifest",), subject="models/tiny/w.bin")
    assert not (site.prefix / "newcomer").exists()


@pytest.mark.parametrize("umask", ["000", "077"])
def test_installed_tree_modes_do_not_depend_on_umask(site: Site, victim: Path, umask: str) -> None:
    """Run by an admin with umask 000, directories must not become world-writable (anyone could then
    add or swap model files after verification); with 077 the serving user must still read them.
    Directories are 755, records 644, files exactly their manifest mode; safeguards/, sbom/ and
    provenance/ are read-only."""
    result = _finished(run_harness("umask", umask, site, victim))
    assert result.returncode == 0, result
    version = site.home / "2.0.0"
    modes = {p.relative_to(version).as_posix(): p.lstat().st_mode & 0o7777 for p in [version, *version.rglob("*")]}
    manifest = json.loads((victim / "manifest.json").read_bytes())
    declared = {f["path"]: f["mode"] for c in manifest["components"] for f in c["files"]}
    for rel, mode in modes.items():
        path = version / rel
        if rel.split("/")[0] in ("safeguards", "sbom", "provenance"):  # read-only on purpose (docs/safeguards.md, sbom.md)
            assert mode == (0o555 if path.is_dir() else 0o444), (rel, oct(mode))
        elif path.is_dir():
            assert mode == 0o755, (rel, oct(mode))
        elif rel in declared:
            assert mode == declared[rel], (rel, oct(mode))
        else:
            assert mode == 0o644, (rel, oct(mode))
