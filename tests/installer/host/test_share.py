"""host/share.py: a new version's file made from an installed one by reflink, hard link or copy, and
checked against the new signed manifest's hash first, whichever way it was made."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from gapship.installer.errors import IntegrityError
from gapship.installer.host.share import COPY, HARDLINK, REFLINK, Want, share_file

from gapship_testing import noise
from loopfs import loop_filesystem_skip, run_on_btrfs

DATA = noise(70_000, seed=3)


def _want(data: bytes = DATA, mode: int = 0o644) -> Want:
    return Want("models/m/w.bin", hashlib.sha256(data).hexdigest(), len(data), mode, "sha256")


def _installed(tmp_path: Path, data: bytes = DATA, mode: int = 0o644) -> Path:
    path = tmp_path / "v1" / "w.bin"
    path.parent.mkdir()
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_hard_link_makes_the_shared_inode_read_only(tmp_path: Path) -> None:
    source = _installed(tmp_path)
    target = tmp_path / "w2.bin"
    method = share_file(source, target, _want())
    if method == REFLINK:  # a filesystem with reflinks under tmp_path: the clone is a private file
        assert target.stat().st_ino != source.stat().st_ino
        return
    assert method == HARDLINK
    assert target.stat().st_ino == source.stat().st_ino and target.stat().st_nlink == 2
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    assert target.read_bytes() == DATA


def test_copy_when_the_mode_differs(tmp_path: Path) -> None:
    source = _installed(tmp_path)
    target = tmp_path / "w2.bin"
    method = share_file(source, target, _want(mode=0o755))
    assert method in (REFLINK, COPY)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 and target.read_bytes() == DATA
    assert stat.S_IMODE(source.stat().st_mode) == 0o644  # not touched


def test_never_changes_a_writable_inode_that_has_other_links(tmp_path: Path) -> None:
    source = _installed(tmp_path)
    os.link(source, tmp_path / "elsewhere")
    method = share_file(source, tmp_path / "w2.bin", _want())
    assert method in (REFLINK, COPY)
    assert stat.S_IMODE(source.stat().st_mode) == 0o644


@pytest.mark.parametrize("hardlink", [True, False], ids=["link", "copy"])
def test_rejects_installed_file_changed_by_one_byte(tmp_path: Path, hardlink: bool) -> None:
    changed = bytearray(DATA)
    changed[12_345] ^= 0x40
    source = _installed(tmp_path, bytes(changed))
    target = tmp_path / "w2.bin"
    with pytest.raises(IntegrityError, match="does not match its sha256 hash"):
        share_file(source, target, _want(), hardlink=hardlink)
    assert not target.exists()


def test_rejects_installed_file_of_another_size(tmp_path: Path) -> None:
    source = _installed(tmp_path, DATA + b"x")
    with pytest.raises(IntegrityError, match="not a regular file of 70000 bytes"):
        share_file(source, tmp_path / "w2.bin", _want())
    assert not (tmp_path / "w2.bin").exists()


def test_rejects_installed_file_swapped_for_a_symlink(tmp_path: Path) -> None:
    real = _installed(tmp_path)
    link = tmp_path / "v1" / "link.bin"
    link.symlink_to(real)
    with pytest.raises(IntegrityError, match="cannot be read"):
        share_file(link, tmp_path / "w2.bin", _want())


def test_no_copy_when_asked_for_links_only(tmp_path: Path) -> None:
    source = _installed(tmp_path, mode=0o644)
    assert share_file(source, tmp_path / "w2.bin", _want(mode=0o755), copy=False) in (None, REFLINK)


# -- reflinks, on a loop-mounted btrfs in a private mount namespace ---------------------------------------

_REFLINK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from gapship.installer.host.share import Want, share_file
    mnt = Path(sys.argv[1])
    data = bytes(range(256)) * 4096
    import hashlib
    src = mnt / "a.bin"
    src.write_bytes(data)
    os.chmod(src, 0o644)
    want = Want("models/m/a.bin", hashlib.sha256(data).hexdigest(), len(data), 0o644, "sha256")
    method = share_file(src, mnt / "b.bin", want)
    bad = mnt / "c.bin"
    bad.write_bytes(data[:-1] + b"x")
    try:
        share_file(bad, mnt / "d.bin", want)
        refused = False
    except Exception as e:
        refused = type(e).__name__ == "IntegrityError" and not (mnt / "d.bin").exists()
    print(json.dumps({"method": method, "same": (mnt / "b.bin").read_bytes() == data,
                      "mode": oct(os.stat(mnt / "b.bin").st_mode & 0o777),
                      "source_mode": oct(os.stat(src).st_mode & 0o777), "refused": refused}))
""")


def test_reflink_on_btrfs_is_checked_and_keeps_the_manifest_mode(tmp_path: Path) -> None:
    reason = loop_filesystem_skip()
    if reason:
        pytest.skip(reason)
    script = tmp_path / "reflink.py"
    script.write_text(_REFLINK_SCRIPT)
    done = run_on_btrfs(tmp_path, [sys.executable, str(script), "MNT"])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {"method": REFLINK, "same": True, "mode": "0o644", "source_mode": "0o644", "refused": True}
