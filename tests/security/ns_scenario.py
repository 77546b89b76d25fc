"""Host faults that need a mount: run inside ``unshare -rm`` (a private user and mount namespace), so the
mounts vanish with the process and the host is never touched (tests/security/test_host_faults.py).

    unshare -rm python ns_scenario.py SCENARIO PREFIX TRUST PREVIOUS_BUNDLE BUNDLE

Scenarios:
- ``tmpfs-bytes``:  PREFIX is a 256 KiB tmpfs; 1.0.0 installs, BUNDLE (bigger) hits ENOSPC on data
- ``tmpfs-inodes``: PREFIX is a tmpfs with just enough inodes for 1.0.0 and BUNDLE's files, not for
  the records (manifest copy, receipt) written after them
- ``read-only``:   PREFIX (1.0.0 installed) is bind-mounted read-only

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


def main(scenario: str, prefix: Path, trust: str, previous: str, bundle: str) -> dict[str, Any]:
    def install(b: str) -> tuple[int, dict[str, Any]]:
        return gapship("install", b, "--trust", trust, "--prefix", str(prefix))

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
