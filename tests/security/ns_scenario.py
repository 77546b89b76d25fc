"""Host faults that need a mount: run inside ``unshare -rm`` (a private user and mount namespace), so the
mounts vanish with the process and the host is never touched (tests/security/test_host_faults.py).

    unshare -rm python ns_scenario.py SCENARIO PREFIX TRUST PREVIOUS_BUNDLE BUNDLE

Scenarios:
- ``tmpfs-bytes``:  PREFIX is a 256 KiB tmpfs; 1.0.0 installs, BUNDLE (bigger) hits ENOSPC on data
- ``tmpfs-inodes``: PREFIX is a tmpfs with just enough inodes for 1.0.0 and BUNDLE's files, not for
  the records (manifest copy, receipt) written after them
- ``read-only``:   PREFIX (1.0.0 installed) is bind-mounted read-only
- ``log-full``:    the audit log lives on a 16 KiB tmpfs beside PREFIX, filled up but for a few bytes
  at the end of the log's last page, so the install's intent record cannot be appended
  (tests/security/test_audit_before_visible.py); then the filler goes and the install runs again
- ``state-read-only``: PREFIX/.gapship (the host state) is bind-mounted read-only
  (tests/security/test_rollback_floor.py)

Each installs PREVIOUS_BUNDLE if the prefix is fresh, snapshots the prefix, runs the faulty install,
checks that nothing changed, then lifts the fault (remount bigger or read-write) and installs again.
Prints one JSON report on stdout; the test makes the assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "support"))

from hostile import litter, snapshot  # noqa: E402


def gapship(*args: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "gapship.installer", *args, "--json"], capture_output=True,
                            text=True, timeout=120)
    try:
        out = json.loads(result.stdout)
    except ValueError:
        out = {"stdout": result.stdout, "stderr": result.stderr}
    return result.returncode, out


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def used_inodes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_files - st.f_ffree


def log_full(prefix: Path, trust: str, bundle: str) -> dict[str, Any]:
    from gapship.installer.host.audit import AuditLog

    logfs = prefix.parent / "logfs"
    logfs.mkdir(exist_ok=True)
    mount("-t", "tmpfs", "-o", "size=16k,mode=0755", "tmpfs", str(logfs))
    log = logfs / "audit.jsonl"
    pad = 0
    while True:  # one record that ends the log 10 bytes before a page boundary
        log.unlink(missing_ok=True)
        opened = AuditLog.open(log)
        opened.append({"command": "setup", "decision": "accepted", "pad": "x" * pad})
        opened.close()
        size = log.stat().st_size
        if size % 4096 == 4086:
            break
        pad += (4086 - size % 4096) % 4096
    filler = logfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: the tmpfs is full
    finally:
        os.close(fd)
    report: dict[str, Any] = {"log_before": log.read_bytes().decode()}
    before = snapshot(prefix)
    report["faulty"] = gapship("install", bundle, "--trust", trust, "--prefix", str(prefix), "--audit-log", str(log))
    report["unchanged"] = snapshot(prefix) == before
    report["log_after"] = log.read_bytes().decode()
    report["current"] = os.readlink(prefix / "demo" / "current")
    report["litter"] = litter(prefix / "demo")
    filler.unlink()
    report["next"] = gapship("install", bundle, "--trust", trust, "--prefix", str(prefix), "--audit-log", str(log))
    report["next_current"] = os.readlink(prefix / "demo" / "current")
    report["verify"] = gapship("audit", "verify", "--log", str(log))
    return report


def state_read_only(prefix: Path, trust: str, bundle: str) -> dict[str, Any]:
    state = prefix / ".gapship"
    mount("--bind", str(state), str(state))
    mount("-o", "remount,bind,ro", str(state))
    before = snapshot(prefix)
    report: dict[str, Any] = {"faulty": gapship("install", bundle, "--trust", trust, "--prefix", str(prefix))}
    report["unchanged"] = snapshot(prefix) == before
    report["current"] = os.readlink(prefix / "demo" / "current")
    report["litter"] = litter(prefix / "demo")
    return report  # the test lifts this fault itself, outside the namespace


def main(scenario: str, prefix: Path, trust: str, previous: str, bundle: str) -> dict[str, Any]:
    def install(b: str) -> tuple[int, dict[str, Any]]:
        return gapship("install", b, "--trust", trust, "--prefix", str(prefix))

    if scenario == "log-full":
        return log_full(prefix, trust, bundle)
    if scenario == "state-read-only":
        return state_read_only(prefix, trust, bundle)
    report: dict[str, Any] = {}
    if scenario == "tmpfs-bytes":
        mount("-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(prefix))
        report["previous"] = install(previous)
    elif scenario == "tmpfs-inodes":
        # inodes: what 1.0.0 takes, plus a staging directory and BUNDLE's model files and directories,
        # but not the records written after them
        mount("-t", "tmpfs", "-o", "size=64m,nr_inodes=64,mode=0755", "tmpfs", str(prefix))
        report["previous"] = install(previous)
        budget = used_inodes(prefix) + 1 + 4 + 2
        mount("-o", f"remount,nr_inodes={budget}", str(prefix))
    elif scenario == "read-only":
        mount("--bind", str(prefix), str(prefix))
        mount("-o", "remount,bind,ro", str(prefix))
    before = snapshot(prefix)
    report["faulty"] = install(bundle)
    report["unchanged"] = snapshot(prefix) == before
    report["litter"] = litter(prefix / "demo")
    report["current"] = os.readlink(prefix / "demo" / "current")
    if scenario == "read-only":
        return report  # the test lifts this fault itself, outside the namespace
    mount("-o", "remount,size=64m,nr_inodes=4096", str(prefix))
    report["next"] = install(bundle)
    report["next_litter"] = litter(prefix / "demo")
    report["next_current"] = os.readlink(prefix / "demo" / "current")
    report["previous_files"] = sorted(p.name for p in (prefix / "demo" / "1.0.0" / "models" / "tiny").iterdir())
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:6])))
