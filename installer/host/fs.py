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
