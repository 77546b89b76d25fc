"""Small filesystem helpers shared by the installer and the bundler."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it, best effort (it is litter or a failed staging dir).

    Directories are made writable first: an installed ``safeguards/`` is deliberately 0555, and a
    non-root user cannot unlink inside it until the write bit is back. ``os.walk`` does not follow
    symlinks, so nothing outside ``path`` is touched.
    """
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    for dirpath, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def creation_mask(folder: Path) -> int:
    """The mode bits a file created in ``folder`` may lose: the process's umask, read without setting
    it (``os.umask`` sets it, for every thread at once; Linux: /proc/self/status), or 0o777 when it
    cannot be read or when ``folder`` has a default ACL, which replaces the umask with its own mask
    (so a file created 0644 could come out 0640). A caller creates a file with its final mode only
    where none of its bits are in this mask, and else sets the mode explicitly (fchmod)."""
    try:
        os.getxattr(folder, "system.posix_acl_default")
        return 0o777  # a default ACL: the umask does not decide
    except OSError:
        pass  # ENODATA (no default ACL), or no ACL support at all: the umask decides
    except AttributeError:  # no xattr calls on this platform: be explicit
        return 0o777
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777
