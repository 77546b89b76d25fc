"""Issue 13, class 4: the anti-rollback floor survives losing its file (docs/trust.md, "Anti-rollback").

The floor every install checks is the higher of ``PREFIX/.gapship/state.json``'s and the highest version
whose kept manifest and signatures in ``PREFIX/<name>/<version>/`` verify under the trust store; it is
raised durably before ``current`` switches, and a state that cannot be written leaves 1.0.0 current.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from attack_site import HARNESS, Site
from gapship.installer.formats.root import FloorReset, Root
from gapship.installer.trust import counts_for_floor
from gapship_testing import run_json
from hostile import litter, snapshot

NS_SCENARIO = Path(__file__).with_name("ns_scenario.py")


def state_file(site: Site) -> Path:
    return site.prefix / ".gapship" / "state.json"


def floor(site: Site) -> str | None:
    data = json.loads(state_file(site).read_bytes()) if state_file(site).exists() else {"bundles": {}}
    entry = data["bundles"].get("demo")
    return entry["highest_version"] if entry else None


def install_next(site: Site) -> None:
    """3.0.0 installed and current (the floor 3.0.0); 1.0.0 still beside it."""
    code, out = site.install(site.next_bundle)
    assert code == 0, out
    assert str((site.home / "current").readlink()) == "3.0.0" and floor(site) == "3.0.0"


def assert_rollback_refused(site: Site, bundle: Path, version: str) -> None:
    before = snapshot(site.prefix)
    code, out = site.install(bundle)
    assert code == 5, out
    assert out["error"]["kind"] == "policy"
    assert f"rollback refused: demo {version} is older than 3.0.0" in out["error"]["message"], out
    assert snapshot(site.prefix) == before
    assert str((site.home / "current").readlink()) == "3.0.0"


# -- losing or editing the state file ---------------------------------------------------------------------


def test_deleted_state_file_does_not_reopen_rollback(site: Site) -> None:
    """state.json deleted: 3.0.0's kept signed manifest is still the floor, so switching back to the
    installed 1.0.0 is refused like any rollback."""
    install_next(site)
    state_file(site).unlink()
    assert_rollback_refused(site, site.previous_bundle, "1.0.0")


def test_deleted_state_file_does_not_let_an_older_new_version_in(site: Site, victim: Path) -> None:
    """state.json deleted: a version never installed here but below 3.0.0 (2.0.0) is refused too."""
    install_next(site)
    state_file(site).unlink()
    assert_rollback_refused(site, victim, "2.0.0")
    assert not (site.home / "2.0.0").exists()


def test_edited_state_floor_does_not_reopen_rollback(site: Site, victim: Path) -> None:
    """The floor in state.json edited down to 0.1 (and the state otherwise valid)."""
    install_next(site)
    data = json.loads(state_file(site).read_bytes())
    data["bundles"]["demo"]["highest_version"] = "0.1"
    state_file(site).write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    assert_rollback_refused(site, victim, "2.0.0")


def test_state_entry_removed_does_not_reopen_rollback(site: Site) -> None:
    """The bundle's entry taken out of state.json, the rest kept."""
    install_next(site)
    data = json.loads(state_file(site).read_bytes())
    del data["bundles"]["demo"]
    state_file(site).write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    assert_rollback_refused(site, site.previous_bundle, "1.0.0")


def test_lost_floor_is_written_back_by_the_next_install(site: Site, victim: Path) -> None:
    """After state.json was lost, an allowed downgrade records the floor the prefix holds (3.0.0), not
    the downgraded version: the floor stays up in the state file too."""
    install_next(site)
    state_file(site).unlink()
    code, out = run_json("install", victim, "--trust", site.trust, "--prefix", site.prefix, "--allow-downgrade")
    assert code == 0, out
    assert out["overrides"] == ["downgrade"]
    assert floor(site) == "3.0.0"


def test_planted_higher_version_directory_is_not_a_floor(site: Site) -> None:
    """A directory named 9.0.0 whose manifest is not signed by a trusted key (here: 3.0.0's manifest
    with its signatures removed) does not raise the floor: 3.0.0 still installs."""
    planted = site.home / "9.0.0"
    (planted / "signatures").mkdir(parents=True)
    shutil.copy(site.next_bundle / "manifest.json", planted / "manifest.json")
    state_file(site).unlink()
    code, out = site.install(site.next_bundle)
    assert code == 0, out


def test_copied_higher_manifest_under_another_version_name_is_not_a_floor(site: Site) -> None:
    """A validly signed manifest of 3.0.0 kept under a directory named 9.0.0 counts for nothing: the
    directory name must be the signed version."""
    planted = site.home / "9.0.0"
    shutil.copytree(site.next_bundle / "signatures", planted / "signatures")
    shutil.copy(site.next_bundle / "manifest.json", planted / "manifest.json")
    state_file(site).unlink()
    code, out = site.install(site.next_bundle)
    assert code == 0, out


def test_version_directory_disowned_by_a_floor_reset_is_not_a_floor() -> None:
    """A root that resets a floor from 999.0.0 disowns the versions at or above it: a 999.0.0 left in
    the prefix must not bring the bad floor back once the state's floor moved on."""
    root = Root(version=0, expires=None, keys={}, roles={}, floor_resets=(FloorReset("demo", "999.0.0", "1.0.0"),))
    assert not counts_for_floor("demo", "999.0.0", root) and not counts_for_floor("demo", "1000", root)
    assert counts_for_floor("demo", "998.0.0", root) and counts_for_floor("other", "999.0.0", root)


# -- a state that cannot be written ------------------------------------------------------------------------


def _harness(fault: str, arg: str, site: Site, bundle: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(HARNESS), fault, arg, "--", "install", str(bundle), "--trust", str(site.trust),
            "--prefix", str(site.prefix), "--json"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_read_only_state_directory_refuses_before_the_switch(site: Site, victim: Path) -> None:
    """PREFIX/.gapship is a read-only bind mount (a user+mount namespace): exit 7 before anything is
    written, 1.0.0 current, no 3.0.0; once writable again, 3.0.0 installs and a plain install of the
    older 2.0.0 is refused."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"this kernel refuses user+mount namespaces with tmpfs: {probe.stderr.decode().strip()}")
    done = subprocess.run(["unshare", "-rm", sys.executable, str(NS_SCENARIO), "state-read-only", str(site.prefix),
                           str(site.trust), str(site.previous_bundle), str(site.next_bundle)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done
    report: dict[str, Any] = json.loads(done.stdout)
    code, out = report["faulty"]
    assert code == 7, report
    assert out["error"]["kind"] == "environment" and "Read-only file system" in out["error"]["message"], report
    assert ".gapship" in out["error"]["message"], report
    assert report["unchanged"] and report["current"] == "1.0.0" and report["litter"] == [], report
    site.assert_previous_intact()
    install_next(site)
    assert_rollback_refused(site, victim, "2.0.0")


def test_state_write_failure_after_the_rename_leaves_previous_version_current(site: Site, victim: Path) -> None:
    """The state's atomic rename fails (EIO) after the new version was renamed into place: the version
    goes again, 1.0.0 stays current, the floor is not raised; the same install then succeeds."""
    before = snapshot(site.prefix)
    result = _harness("fail-call", "replace:state.json:EIO", site, site.next_bundle)
    assert result.returncode == 7, result
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "environment" and "state.json" in error["message"], error
    assert snapshot(site.prefix) == before
    site.assert_previous_intact()
    assert floor(site) == "1.0.0"
    install_next(site)
    assert_rollback_refused(site, victim, "2.0.0")


def test_install_killed_between_floor_and_switch_is_finished_by_a_plain_rerun(site: Site) -> None:
    """SIGKILL right after the raised floor reached the disk, before `current` switched: 1.0.0 still
    current, the floor already 3.0.0, and the same plain command finishes the install (the state's
    entry names 3.0.0's receipt) instead of refusing it as a reinstall."""
    result = _harness("kill-after-call", "replace:state.json", site, site.next_bundle)
    assert result.returncode == -signal.SIGKILL, result
    assert str((site.home / "current").readlink()) == "1.0.0"
    assert floor(site) == "3.0.0" and (site.home / "3.0.0" / "receipt.json").is_file()
    code, out = site.install(site.next_bundle)
    assert code == 0, out
    assert out["status"] == "already-installed" and out["overrides"] == []
    assert str((site.home / "current").readlink()) == "3.0.0" and litter(site.home) == []
    code, out = site.install(site.next_bundle)  # now finished: a plain reinstall is refused as before
    assert code == 5 and "already the highest version" in out["error"]["message"], out
