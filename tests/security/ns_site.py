"""Broken site files at the real default path, in a private user and mount namespace
(tests/security/test_site_config.py):

    unshare -rm python ns_site.py WORK PREFIX TRUST BUNDLE

``/etc`` gets an overlay (upper layer in WORK), so ``/etc/gapship/site.toml`` can be made in every
broken form without touching the host's ``/etc``; ``/var/log`` gets a tmpfs, so the default audit log
``/var/log/gapship/audit.jsonl`` is private too. For each form the real CLI (``python -m
gapship.installer install ... --json``) runs once; the report says its exit code and message, the
decisions it appended to the audit log and whether the prefix stayed as it was. A site file of mode 000 is
read without capabilities (``setpriv``), so the mode binds root too. Then a good site file installs
BUNDLE, and with the site file gone again a reinstall is refused by the prefix's marker.
Prints one JSON report on stdout; the test makes the assertions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "support"))

from hostile import snapshot  # noqa: E402

SITE = Path("/etc/gapship/site.toml")
LOG = Path("/var/log/gapship/audit.jsonl")
GOOD = b'site_id = "test-site"\nsafeguards = ["inference-audit-log"]\n'

FORMS = {
    "dangling-symlink": lambda: SITE.symlink_to("/etc/gapship/nowhere.toml"),
    "symlink-loop": lambda: SITE.symlink_to(SITE.name),
    "directory": lambda: SITE.mkdir(),
    "fifo": lambda: os.mkfifo(SITE),
    "dev-zero": lambda: SITE.symlink_to("/dev/zero"),
    "empty": lambda: SITE.write_bytes(b""),
    "invalid-toml": lambda: SITE.write_bytes(b'site_id = "test-site\n'),
}


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def decisions() -> list[str]:
    if not LOG.exists():
        return []
    return [json.loads(line)["decision"] for line in LOG.read_bytes().splitlines()]


def run(*args: str, drop_caps: bool = False) -> dict[str, Any]:
    """The real CLI; with ``drop_caps``, without any capability (so mode 000 binds root too)."""
    before = len(decisions())
    setpriv = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"] if drop_caps else []
    done = subprocess.run([*setpriv, sys.executable, "-m", "gapship.installer", *args, "--json"], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    try:
        out = json.loads(done.stdout)
    except ValueError:
        out = {"stdout": done.stdout, "stderr": done.stderr}
    message = out.get("error", {}).get("message", "") if isinstance(out.get("error"), dict) else ""
    return {"code": done.returncode, "message": message, "logged": decisions()[before:], "out": out}


def clear() -> None:
    if SITE.is_dir() and not SITE.is_symlink():
        SITE.rmdir()
    elif os.path.lexists(SITE):
        SITE.unlink()


def main(work: Path, prefix: Path, trust: str, bundle: str) -> dict[str, Any]:
    for name in ("upper", "work"):
        (work / name).mkdir(parents=True)
    mount("-t", "overlay", "overlay", "-o", f"lowerdir=/etc,upperdir={work / 'upper'},workdir={work / 'work'}",
          "/etc")
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/var/log")
    shutil.rmtree("/etc/gapship", ignore_errors=True)
    SITE.parent.mkdir()
    install = ["install", bundle, "--trust", trust, "--prefix", str(prefix)]
    report: dict[str, Any] = {}
    for form, make in FORMS.items():
        make()
        before = snapshot(prefix)
        report[form] = run(*install)
        report[form]["unchanged"] = snapshot(prefix) == before
        clear()
    SITE.write_bytes(GOOD)
    SITE.chmod(0)
    before = snapshot(prefix)
    report["unreadable"] = run(*install, drop_caps=True)
    report["unreadable"]["unchanged"] = snapshot(prefix) == before
    SITE.chmod(0o644)
    report["good"] = run(*install)
    clear()
    report["marked"] = run(*install, "--allow-reinstall")
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:5])))
