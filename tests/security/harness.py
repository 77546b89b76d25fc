"""Run the real gapship CLI in a subprocess with one fault injected (tests/security/test_host_faults.py).

    python harness.py FAULT [ARG] -- install BUNDLE --trust T --prefix P [--json]

Faults hook the os functions the installer calls (wherever in the code it calls them), so they keep
working when the installer's internals are reorganised; no environment variable is involved:

- ``kill-first-write``       SIGKILL right after the first byte lands in a staging directory
- ``kill-before-rename``     SIGKILL just before the staging directory is renamed into place
- ``kill-after-rename``      SIGKILL just after that rename, before ``current`` is switched
- ``kill-before-switch``     SIGKILL after the new ``current`` symlink was made, before it replaces the old
- ``pause-before-rename DIR``  create DIR/paused, then wait (at most 60 s) for DIR/release
- ``tamper-after-first-read CHUNK:OFFSET``  after the first read from CHUNK, flip the byte at OFFSET
  in place (same inode: the media changes under the reader)
- ``replace-after-first-read CHUNK:SOURCE``  after the first read from CHUNK, rename SOURCE over it
- ``rlimit-fsize BYTES``     RLIMIT_FSIZE: writes past BYTES fail with EFBIG (a full quota)
- ``umask OCTAL``            run with this umask (the installed tree must not depend on it)
- ``fail-call FUNC:NEEDLE:ERRNO[:N]``  the first (or the Nth) ``os.FUNC`` call about a path containing
  NEEDLE (a path argument, or the file behind a descriptor) raises OSError(ERRNO) instead of running
- ``short-write NEEDLE``     the first ``os.write`` to a file whose path contains NEEDLE writes only half
  of its bytes and returns that count (a disk that fills up half-way through a write)
- ``kill-after-call FUNC:NEEDLE``  SIGKILL right after the first such ``os.FUNC`` call returned
- ``none``                   no fault
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

STAGING = "/.staging-"


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap(name: str, before: Callable[..., None] | None = None, after: Callable[..., None] | None = None) -> None:
    real = getattr(os, name)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if before:
            before(*args)
        result = real(*args, **kwargs)
        if after:
            after(*args)
        return result

    setattr(os, name, hooked)


def _on_first_read(chunk: str, action: Callable[[], None]) -> None:
    done = []

    def after(fd: int, *_: Any) -> None:
        if not done and _fd_path(fd) == chunk:
            done.append(True)
            action()

    for name in ("read", "readv", "pread", "preadv"):
        _wrap(name, after=after)


def _flip(path: str, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0x01]), offset)
    finally:
        os.close(fd)


def _is_staging_rename(src: Any, *_: Any) -> bool:
    return os.path.basename(os.fspath(src)).startswith(".staging-")


def _about(args: tuple[Any, ...], needle: str) -> bool:
    """Whether a call's path arguments (or the files behind its descriptors) contain ``needle``."""
    for value in args[:2]:
        if isinstance(value, int) and not isinstance(value, bool):
            if needle in _fd_path(value):
                return True
        elif isinstance(value, (str, bytes, os.PathLike)):
            if needle in os.fsdecode(os.fspath(value)):
                return True
    return False


def _once(name: str, needle: str, action: Callable[..., Any], *, after: bool = False, nth: int = 1) -> None:
    """Run ``action(real, *args)`` in place of (or, ``after``, once after) the ``nth`` matching call."""
    real = getattr(os, name)
    seen: list[bool] = []

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if len(seen) >= nth or not _about(args, needle):
            return real(*args, **kwargs)
        seen.append(True)
        if len(seen) < nth:
            return real(*args, **kwargs)
        if after:
            result = real(*args, **kwargs)
            action(real, *args)
            return result
        return action(real, *args)

    setattr(os, name, hooked)


def _raise(code: int) -> Callable[..., Any]:
    def fail(_real: Any, *_args: Any) -> Any:
        raise OSError(code, os.strerror(code))
    return fail


def _half_write(real: Any, fd: int, data: Any, *_: Any) -> int:
    view = memoryview(data)
    return int(real(fd, view[:max(1, len(view) // 2)]))


def install_fault(fault: str, arg: str | None) -> None:
    if fault == "kill-first-write":
        def after_write(fd: int, *_: Any) -> None:
            if STAGING in _fd_path(fd):
                _die()
        for name in ("write", "writev", "pwrite", "pwritev"):
            _wrap(name, after=after_write)
    elif fault == "kill-before-rename":
        _wrap("rename", before=lambda src, *a: _is_staging_rename(src) and _die())
    elif fault == "kill-after-rename":
        _wrap("rename", after=lambda src, *a: _is_staging_rename(src) and _die())
    elif fault == "kill-before-switch":
        _wrap("replace", before=lambda src, *a: os.path.basename(os.fspath(src)).startswith(".current-") and _die())
    elif fault == "pause-before-rename":
        assert arg is not None
        _wrap("rename", before=lambda src, *a: _is_staging_rename(src) and _pause(arg))
    elif fault == "tamper-after-first-read":
        assert arg is not None
        chunk, offset = arg.rsplit(":", 1)
        _on_first_read(chunk, lambda: _flip(chunk, int(offset)))
    elif fault == "replace-after-first-read":
        assert arg is not None
        chunk, source = arg.split(":", 1)
        _on_first_read(chunk, lambda: os.rename(source, chunk))
    elif fault == "rlimit-fsize":
        assert arg is not None
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), int(arg)))
    elif fault == "umask":
        assert arg is not None
        os.umask(int(arg, 8))
    elif fault == "fail-call":
        assert arg is not None
        name, needle, code, *nth = arg.split(":")
        _once(name, needle, _raise(getattr(errno, code)), nth=int(nth[0]) if nth else 1)
    elif fault == "short-write":
        assert arg is not None
        _once("write", arg, _half_write)
    elif fault == "kill-after-call":
        assert arg is not None
        name, needle = arg.split(":")
        _once(name, needle, lambda *_: _die(), after=True)
    elif fault != "none":
        raise SystemExit(f"unknown fault {fault!r}")


def _pause(folder: str) -> None:
    open(os.path.join(folder, "paused"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(folder, "release")) and time.monotonic() < deadline:
        time.sleep(0.02)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    fault, arg = argv[0], (argv[1] if split > 1 else None)
    install_fault(fault, arg)
    from gapship.bundler.cli.main import main as gapship

    sys.argv = ["gapship", *argv[split + 1:]]
    gapship()


if __name__ == "__main__":
    main(sys.argv[1:])
