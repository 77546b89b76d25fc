"""``gapship audit export --out``: a target that cannot become a new file is refused with one line
naming it and a documented exit code, before the host key is made (docs/cli.md, ``audit export``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gapship_testing import run, run_json


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    return path


def export(log: Path, out: Path, key: Path) -> tuple[int, dict[str, object], str]:
    code, data = run_json("audit", "export", "--log", log, "--out", out, "--host-key", key)
    text = run("audit", "export", "--log", log, "--out", out, "--host-key", key)
    assert text.exit_code == code and text.stdout == ""
    assert len(text.stderr.splitlines()) == 1
    return code, data, text.stderr.removeprefix("gapship: error: ").rstrip("\n")


def assert_refused(log: Path, out: Path, *, code: int, message: str, subject: Path) -> None:
    key = log.parent / "keys" / "host.key"
    got, data, line = export(log, out, key)
    assert got == code, data
    error = data["error"]
    assert isinstance(error, dict)
    assert error["message"] == message == line
    assert error["subject"] == str(subject)
    assert not key.exists() and not key.parent.exists()  # checked before the host key is made


def test_export_into_a_missing_folder_is_refused_before_the_host_key_is_made(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "no-such-folder" / "site.export"
    assert_refused(log, out, code=2, subject=out.parent,
                   message=f"folder {out.parent} does not exist (--out {out}); make it first")


def test_export_onto_a_folder_is_refused(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "exports"
    out.mkdir()
    assert_refused(log, out, code=2, subject=out,
                   message=f"{out} is a folder; --out names the export file to write in it")


def test_export_over_an_existing_file_is_refused(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "site.export"
    out.write_bytes(b"an earlier export")
    assert_refused(log, out, code=2, subject=out, message=f"{out} already exists; refusing to overwrite it")
    assert out.read_bytes() == b"an earlier export"


def test_export_over_a_dangling_symlink_is_refused(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "site.export"
    out.symlink_to(tmp_path / "elsewhere")
    assert_refused(log, out, code=2, subject=out, message=f"{out} already exists; refusing to overwrite it")
    assert not (tmp_path / "elsewhere").exists()


def test_export_under_a_file_is_refused(log: Path, tmp_path: Path) -> None:
    out = log / "site.export"
    assert_refused(log, out, code=2, subject=log, message=f"{log} is not a folder (--out {out})")


def test_export_into_an_unwritable_folder_is_refused(log: Path, tmp_path: Path) -> None:
    """As root (CI), the real command runs with every capability dropped (setpriv), so the folder's
    mode binds it as it binds any other user."""
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    out = folder / "site.export"
    message = f"cannot write into folder {folder}: permission denied or a read-only filesystem"
    if os.geteuid() != 0:
        assert_refused(log, out, code=7, subject=folder, message=message)
        return
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv(1) is needed to drop root's capabilities (util-linux)")
    key = tmp_path / "keys" / "host.key"
    done = subprocess.run(["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--", sys.executable, "-m",
                           "gapship.installer", "audit", "export", "--log", str(log), "--out", str(out),
                           "--host-key", str(key), "--json"], capture_output=True, timeout=60)
    assert done.returncode == 7, done
    error = json.loads(done.stdout)["error"]
    assert error["message"] == message and error["subject"] == str(folder)
    assert not key.exists() and not key.parent.exists()


def test_export_into_an_existing_folder_works(log: Path, tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    code, data = run_json("audit", "export", "--log", log, "--out", tmp_path / "exports" / "site.export",
                          "--host-key", tmp_path / "keys" / "host.key")
    assert code == 0, data
    assert data["host_key_created"] is True and (tmp_path / "exports" / "site.export").is_file()
