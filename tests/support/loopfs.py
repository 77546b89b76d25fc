"""A loop-mounted btrfs in a private mount namespace, for the reflink tests and the delta benchmark."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def loop_filesystem_skip() -> str | None:
    """Why a loop-mounted btrfs cannot be made here, or None."""
    if shutil.which("mkfs.btrfs") is None:
        return "mkfs.btrfs is not installed (apt-get install btrfs-progs; .ci/run does)"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "a loop mount needs root and unshare(1)"
    return None


def run_on_btrfs(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (with MNT replaced by the mount point) on a fresh loop-mounted btrfs, inside
    ``unshare --mount`` so that the mount disappears with the process."""
    image, mnt = tmp_path / "btrfs.img", tmp_path / "mnt"
    with image.open("wb") as f:
        f.truncate(256 * 1024 * 1024)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    os.chmod(mnt, 0o755)
    inner = " ".join(f"'{a}'" for a in argv).replace("MNT", str(mnt))
    return subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -o loop '{image}' '{mnt}' && chmod 755 '{mnt}' "
                           f"&& {inner}"], capture_output=True, text=True, timeout=120)
