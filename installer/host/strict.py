"""Ownership and mode checks on the directories an install writes into, as ssh's StrictModes does
for ``~/.ssh`` (docs/site-admin.md, "The prefix is checked like ssh's StrictModes").

Whoever can write a directory can swap what is in it, so before an install reads or writes anything
under a prefix, each directory it relies on must be safe:

- ``PREFIX``, ``PREFIX/<name>`` and ``PREFIX/.gapship`` (the ones gapship writes into): a real
  directory, not a symlink (a symlink would be followed, and the clean-up of litter would then
  delete directories at its target), owned by the user running gapship or by root, and writable by
  neither group nor others;
- every ancestor of ``PREFIX`` up to ``/``, after resolving symlinks (whoever can rename an ancestor
  can replace the whole prefix): owned by that user or by root, and writable by neither group nor
  others unless the sticky bit is set. In a sticky directory such as ``/tmp`` only an entry's owner
  (or root) can rename or remove it, and the entry below is checked in turn.

A refusal is a :class:`~gapship.installer.errors.HostError` (exit 7) naming the path. What is missing
is not refused: the install creates it, with :func:`make_dirs`, mode 0755 whatever the umask (under
umask 000 a plain ``mkdir`` would make a world-writable directory, which the next run refuses).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import HostError

UNSAFE_BITS = stat.S_IWGRP | stat.S_IWOTH
DIR_MODE = 0o755


def installer_uid() -> int:
    """The user an install runs as: the effective uid, the one that owns what it creates."""
    return os.geteuid()


def check_dir(path: Path, *, what: str) -> bool:
    """Refuse ``path`` unless it is a safe directory (module docstring); False when it does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise HostError(f"cannot check {what} {path}: {e.strerror}", subject=str(path)) from None
    if stat.S_ISLNK(st.st_mode):
        raise HostError(f"{what} {path} is a symlink (to {os.readlink(path)!r}); give the real directory, "
                        "gapship does not follow a symlinked prefix or bundle home", subject=str(path))
    if not stat.S_ISDIR(st.st_mode):
        raise HostError(f"{what} {path} is not a directory", subject=str(path))
    _check_owner_and_mode(path, st, what=what, sticky_ok=False)
    return True


def check_ancestors(path: Path) -> None:
    """Refuse when an ancestor of ``path`` (symlinks resolved) could be renamed by another user."""
    real = Path(os.path.realpath(path.parent))
    for ancestor in (real, *real.parents):
        try:
            st = os.stat(ancestor)
        except FileNotFoundError:
            continue  # created later, by make_dirs
        except OSError as e:
            raise HostError(f"cannot check {ancestor}: {e.strerror}", subject=str(ancestor)) from None
        _check_owner_and_mode(ancestor, st, what="directory above the prefix", sticky_ok=True)


def check_prefix(prefix: Path, *, home: Path, state_dir: Path) -> None:
    """The checks before an install touches ``prefix`` (module docstring)."""
    check_ancestors(prefix)
    if check_dir(prefix, what="prefix"):
        check_dir(home, what="bundle home")
        check_dir(state_dir, what="host state directory")


def _check_owner_and_mode(path: Path, st: os.stat_result, *, what: str, sticky_ok: bool) -> None:
    uid = installer_uid()
    if st.st_uid not in (uid, 0):
        raise HostError(f"{what} {path} is owned by uid {st.st_uid}, not by the user installing (uid {uid}) "
                        "or root; anyone who owns it can swap what gapship installs", subject=str(path))
    if st.st_mode & UNSAFE_BITS and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        raise HostError(f"{what} {path} is writable by {_who_can_write(st.st_mode)} (mode "
                        f"{stat.S_IMODE(st.st_mode):o}); make it 755 (chmod go-w)", subject=str(path))


def _who_can_write(mode: int) -> str:
    return " and ".join(who for bit, who in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit)


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each mode 0755 whatever the umask; raise
    :class:`HostError` naming the directory that could not be made."""
    missing: list[Path] = []
    for level in (path, *path.parents):
        if os.path.lexists(level):
            break
        missing.append(level)
    for level in reversed(missing):
        try:
            os.mkdir(level, DIR_MODE)
            os.chmod(level, DIR_MODE)  # mkdir's mode is filtered by the umask
        except FileExistsError:
            continue  # another process made it meanwhile; check_dir looks at it next
        except OSError as e:
            reason = "permission denied" if isinstance(e, PermissionError) else e.strerror
            raise HostError(f"cannot create {level}: {reason}", subject=str(level)) from None
