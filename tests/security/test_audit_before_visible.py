"""Issue 13, class 3: no log, no install, for real (docs/safeguards.md, "The audit log").

The install's intent record is durable in the audit log before anything becomes visible; a log that
cannot take it (a torn last line, a full filesystem, a short write, a failed fsync) stops the install
with 1.0.0 still current and the log exactly as it was; the torn line is sealed by a recorded command
that deletes nothing. On a site host, ``--audit-log`` never takes an install off the site's log.
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
from gapship.installer.host.audit import line_hash
from gapship_testing import run, run_json
from hostile import litter, snapshot
from safeguards_testing import isolated_host, site_file  # noqa: F401

NS_SCENARIO = Path(__file__).with_name("ns_scenario.py")


def install(site: Site, bundle: Path, log: Path, *extra: str | Path) -> tuple[int, dict[str, Any]]:
    return run_json("install", bundle, "--trust", site.trust, "--prefix", site.prefix, "--audit-log", log, *extra)


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_bytes().splitlines()]


def logged_site(site: Site, tmp_path: Path) -> Path:
    """An audit log with one verify record in it, as a site's log would have."""
    log = tmp_path / "audit.jsonl"
    code, out = run_json("verify", site.previous_bundle, "--trust", site.trust, "--audit-log", log)
    assert code == 0, out
    return log


def assert_not_installed(site: Site, before: dict[str, Any]) -> None:
    """1.0.0 is current and intact, 3.0.0 is nowhere, the prefix is exactly as it was."""
    site.assert_previous_intact()
    assert not (site.home / "3.0.0").exists()
    assert snapshot(site.prefix) == before


def assert_log_intact(log: Path) -> dict[str, Any]:
    code, out = run_json("audit", "verify", "--log", log)
    assert code == 0, out
    return out


# -- a damaged tail refuses before any work, and is sealed, not deleted ---------------------------------


def test_torn_log_tail_refuses_install_before_anything_changes(site: Site, tmp_path: Path) -> None:
    """A log that ends in a torn line (a crash mid-append): the install refuses at once, exit 7 naming the
    log and the way out, before reading the bundle; nothing in the prefix or the log changes."""
    log = logged_site(site, tmp_path)
    with log.open("ab") as f:
        f.write(b'{"audit_version":1,"command":"inst')
    torn = log.read_bytes()
    before = snapshot(site.prefix)
    code, out = install(site, site.next_bundle, log)
    assert code == 7, out
    error = out["error"]
    assert error["kind"] == "environment" and error["subject"] == str(log)
    assert "ends in an incomplete line" in error["message"] and str(log) in error["message"]
    assert "gapship audit seal" in error["hint"]
    assert_not_installed(site, before)
    assert log.read_bytes() == torn
    text = run("install", site.next_bundle, "--trust", site.trust, "--prefix", site.prefix, "--audit-log", log)
    assert text.exit_code == 7 and text.stderr.splitlines()[0] == f"gapship: error: {error['message']}"


def test_torn_log_tail_is_sealed_by_a_recorded_command_that_deletes_nothing(site: Site, tmp_path: Path) -> None:
    """The way out: `audit seal` keeps the torn bytes in the log and appends a record naming their hash;
    the chain verifies again, and the next install is recorded after the seal."""
    log = logged_site(site, tmp_path)
    fragment = b'{"audit_version":1,"command":"inst'
    with log.open("ab") as f:
        f.write(fragment)
    torn = log.read_bytes()
    code, out = run_json("audit", "verify", "--log", log)
    assert code == 3 and "line 2 is incomplete" in out["error"]["message"]
    code, sealed = run_json("audit", "seal", "--log", log)
    assert code == 0, sealed
    assert sealed["sealed"] is True and sealed["line"] == 2 and sealed["bytes"] == len(fragment)
    assert sealed["sha256"] == line_hash(fragment)
    assert log.read_bytes().startswith(torn + b"\n")  # every byte is still there
    seal = json.loads(log.read_bytes().splitlines()[2])
    assert seal["command"] == "audit seal" and seal["seq"] == 3 and seal["prev"] == line_hash(fragment)
    assert seal["sealed"]["after"] == line_hash(log.read_bytes().splitlines()[0])
    assert assert_log_intact(log)["sealed"] == [2]
    code, out = install(site, site.next_bundle, log)
    assert code == 0, out
    assert [json.loads(line)["decision"] for line in log.read_bytes().splitlines()[3:]] == ["intent", "accepted"]
    assert assert_log_intact(log)["lines"] == 5
    code, again = run_json("audit", "seal", "--log", log)
    assert code == 0 and again["sealed"] is False  # nothing left to seal


def test_log_ending_in_a_line_that_is_not_a_record_refuses_and_can_be_sealed(site: Site, tmp_path: Path) -> None:
    """A complete last line that is not a gapship record (another program wrote to the log)."""
    log = logged_site(site, tmp_path)
    with log.open("ab") as f:
        f.write(b"rotated by logrotate\n")
    before = snapshot(site.prefix)
    code, out = install(site, site.next_bundle, log)
    assert code == 7 and "the last line is not a gapship audit record" in out["error"]["message"], out
    assert_not_installed(site, before)
    assert run_json("audit", "seal", "--log", log)[0] == 0
    assert assert_log_intact(log)["sealed"] == [2]
    assert install(site, site.next_bundle, log)[0] == 0


def test_seal_refuses_damage_before_the_last_line(site: Site, tmp_path: Path) -> None:
    """An edit in the middle of the log is evidence, not a torn write: seal changes nothing (exit 3)."""
    log = logged_site(site, tmp_path)
    assert install(site, site.next_bundle, log)[0] == 0
    lines = log.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"decision":"intent"', b'"decision":"intent "')
    log.write_bytes(b"".join(lines))
    damaged = log.read_bytes()
    code, out = run_json("audit", "seal", "--log", log)
    assert code == 3 and "line 2" in out["error"]["message"], out
    assert log.read_bytes() == damaged


def test_seal_refuses_a_replayed_last_record(site: Site, tmp_path: Path) -> None:
    """A last line that is a well-formed record out of the chain (an earlier record appended again) is
    not a torn write: seal changes nothing (exit 3), and the install still refuses."""
    log = logged_site(site, tmp_path)
    assert install(site, site.next_bundle, log)[0] == 0
    with log.open("ab") as f:
        f.write(log.read_bytes().splitlines(keepends=True)[0])
    damaged = log.read_bytes()
    code, out = run_json("audit", "seal", "--log", log)
    assert code == 3, out
    assert log.read_bytes() == damaged


# -- the intent record is durable before anything is visible -------------------------------------------


def test_intent_record_precedes_the_switch_and_the_receipt_keeps_it(site: Site, tmp_path: Path) -> None:
    """The order on record: intent (what is about to become current), then the outcome naming it; the
    receipt and the host state keep the intent's sequence number and hash."""
    log = logged_site(site, tmp_path)
    code, out = install(site, site.next_bundle, log)
    assert code == 0, out
    lines = log.read_bytes().splitlines()
    intent, outcome = json.loads(lines[1]), json.loads(lines[2])
    assert intent["decision"] == "intent" and intent["install"]["previous"] == "1.0.0"
    assert intent["install"]["bundle"] == {"name": "demo", "version": "3.0.0"}
    assert intent["install"]["floor"] == "1.0.0" and intent["install"]["new_floor"] == "3.0.0"
    ref = {"log": str(log), "seq": 2, "record": line_hash(lines[1])}
    assert outcome["decision"] == "accepted" and outcome["intent"] == {"seq": 2, "record": ref["record"]}
    assert json.loads((site.home / "3.0.0" / "receipt.json").read_bytes())["audit"] == [ref]
    state = json.loads((site.prefix / ".gapship" / "state.json").read_bytes())
    assert state["bundles"]["demo"]["audit"] == [ref]


def harness(fault: str, arg: str, site: Site, bundle: Path, log: Path) -> subprocess.CompletedProcess[str]:
    """``gapship install`` with an audit log, in a subprocess with one fault (tests/security/harness.py)."""
    argv = [sys.executable, str(HARNESS), fault, arg, "--", "install", str(bundle), "--trust", str(site.trust),
            "--prefix", str(site.prefix), "--audit-log", str(log), "--json"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fault", ["short-write", "fail-fsync"])
def test_failed_intent_append_leaves_previous_version_current(site: Site, tmp_path: Path, fault: str) -> None:
    """The disk fills half-way through the intent record (a short write), or its fsync fails (EIO): the
    bytes that landed are cut off again, nothing is installed, and the refusal is on record."""
    log = logged_site(site, tmp_path)
    kept = log.read_bytes()
    before = snapshot(site.prefix)
    name, arg = ("short-write", "audit.jsonl") if fault == "short-write" else ("fail-call", "fsync:audit.jsonl:EIO")
    result = harness(name, arg, site, site.next_bundle, log)
    assert result.returncode == 7, result
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "environment" and "cannot append to the audit log" in error["message"], error
    assert_not_installed(site, before)
    after = records(log)
    assert log.read_bytes().startswith(kept)  # no torn or half-durable line
    assert [(r["decision"], r["reason"]["kind"]) for r in after[1:]] == [("refused", "environment")]
    assert_log_intact(log)
    site.assert_next_run_succeeds()


def test_install_killed_after_its_intent_is_finished_by_a_plain_rerun(site: Site, tmp_path: Path) -> None:
    """SIGKILL right after the intent record reached the disk: an intent without an outcome, 1.0.0 still
    current; the same command again installs and records its own intent and outcome."""
    log = logged_site(site, tmp_path)
    result = harness("kill-after-call", "fsync:audit.jsonl", site, site.next_bundle, log)
    assert result.returncode == -signal.SIGKILL, result
    site.assert_previous_intact(busy=True)
    assert [r["decision"] for r in records(log)] == ["accepted", "intent"]
    code, out = install(site, site.next_bundle, log)
    assert code == 0, out
    assert [r["decision"] for r in records(log)] == ["accepted", "intent", "intent", "accepted"]
    assert str((site.home / "current").readlink()) == "3.0.0" and litter(site.home) == []


def test_outcome_lost_after_a_recorded_install_warns_and_keeps_the_intent(site: Site, tmp_path: Path) -> None:
    """The log fails after the intent was durable and 3.0.0 became current (the outcome's fsync, EIO):
    the install is on record by its intent, so the command succeeds with a warning naming it, and the
    log holds no half-written outcome."""
    log = logged_site(site, tmp_path)
    result = harness("fail-call", "fsync:audit.jsonl:EIO:2", site, site.next_bundle, log)
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["ok"] is True and len(result.stdout.splitlines()) == 1
    assert "warning: cannot append to the audit log" in result.stderr and f"{log} line 2" in result.stderr
    assert [r["decision"] for r in records(log)] == ["accepted", "intent"]
    assert str((site.home / "current").readlink()) == "3.0.0"
    assert_log_intact(log)


def test_full_log_filesystem_leaves_previous_version_current(site: Site, tmp_path: Path) -> None:
    """The audit log's filesystem is full (a real tmpfs, run in a user+mount namespace): exit 7, 1.0.0
    current, the log byte for byte as it was; with room again, the same install succeeds."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"this kernel refuses user+mount namespaces with tmpfs: {probe.stderr.decode().strip()}")
    done = subprocess.run(["unshare", "-rm", sys.executable, str(NS_SCENARIO), "log-full", str(site.prefix),
                           str(site.trust), str(site.previous_bundle), str(site.next_bundle)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done
    report = json.loads(done.stdout)
    code, out = report["faulty"]
    assert code == 7, report
    assert "cannot append to the audit log" in out["error"]["message"], out
    assert "No space left on device" in out["error"]["message"], out
    assert report["unchanged"] and report["current"] == "1.0.0" and report["litter"] == [], report
    assert report["log_after"] == report["log_before"], report
    assert report["next"][0] == 0 and report["next_current"] == "3.0.0", report
    assert report["verify"][0] == 0 and report["verify"][1]["lines"] == 3, report


# -- --audit-log on a site host --------------------------------------------------------------------------


def test_audit_log_option_on_a_site_host_also_writes_the_site_log(site: Site, tmp_path: Path, isolated_host) -> None:  # type: ignore[no-untyped-def]
    """`--audit-log elsewhere` at a site used to take the install off the site's record; now both logs
    get the intent and the outcome, and the receipt names both."""
    site_config = site_file(tmp_path, "test-site", "inference-audit-log")
    other = tmp_path / "elsewhere.jsonl"
    code, out = install(site, site.next_bundle, other, "--site-config", site_config)
    assert code == 0, out
    for log in (isolated_host.default_log, other):
        assert [(r["command"], r["decision"]) for r in records(log)] == [("install", "intent"), ("install", "accepted")]
        assert_log_intact(log)
    receipt = json.loads((site.home / "3.0.0" / "receipt.json").read_bytes())
    assert sorted(ref["log"] for ref in receipt["audit"]) == sorted([str(isolated_host.default_log), str(other)])


def test_audit_log_option_cannot_replace_an_unwritable_site_log(site: Site, tmp_path: Path, isolated_host) -> None:  # type: ignore[no-untyped-def]
    """The site's log cannot be opened (a directory in its place): a writable `--audit-log` does not let
    the install through."""
    isolated_host.default_log.mkdir(parents=True)
    other = tmp_path / "elsewhere.jsonl"
    before = snapshot(site.prefix)
    code, out = install(site, site.next_bundle, other, "--site-config", site_file(tmp_path, "test-site",
                                                                                  "inference-audit-log"))
    assert code == 7 and str(isolated_host.default_log) in out["error"]["message"], out
    assert_not_installed(site, before)
    assert not other.exists()


def test_audit_log_option_naming_the_site_log_writes_each_record_once(site: Site, tmp_path: Path, isolated_host) -> None:  # type: ignore[no-untyped-def]
    """`--audit-log` given the site's own log (through another path): one intent and one outcome, not two."""
    isolated_host.default_log.parent.mkdir(parents=True)
    alias = tmp_path / "alias"
    alias.symlink_to(isolated_host.default_log.parent)
    code, out = install(site, site.next_bundle, alias / isolated_host.default_log.name, "--site-config",
                        site_file(tmp_path, "test-site", "inference-audit-log"))
    assert code == 0, out
    assert [r["decision"] for r in records(isolated_host.default_log)] == ["intent", "accepted"]
    receipt = json.loads((site.home / "3.0.0" / "receipt.json").read_bytes())
    assert [ref["log"] for ref in receipt["audit"]] == [str(isolated_host.default_log)]
