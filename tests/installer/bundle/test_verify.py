"""``gapship verify --chunk``: the transfer-pipeline case, one chunk checked alone against the signed
manifest while the others have not arrived yet."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from gapship_testing import KeyPair, assert_error, noise, run, run_json


@pytest.fixture
def arriving(tmp_path: Path, make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
             make_bundle: Callable[..., Path]) -> tuple[Path, Path, Path]:
    """(bundle dir holding only manifest.json and signatures/, the chunks in an inbox dir, trust)."""
    key = make_key("release")
    bundle = make_bundle(key, files={"w.bin": noise(8000, seed=1)})
    inbox = tmp_path / "inbox"
    shutil.move(bundle / "chunks", inbox)
    return bundle, inbox, make_trust(key)


def test_verifies_one_chunk_while_the_others_are_absent(arriving: tuple[Path, Path, Path]) -> None:
    bundle, inbox, trust = arriving
    code, out = run_json("verify", bundle, "--trust", trust, "--chunk", inbox / "00002.bin")
    assert code == 0, out
    assert (out["scope"], out["chunks_checked"], out["bytes_checked"]) == ("chunk", 1, 1024)
    assert out["chunks_total"] == len(list(inbox.iterdir()))
    assert not (bundle / "chunks").exists()
    result = run("verify", bundle, "--trust", trust, "--chunk", inbox / "00002.bin", "--chunk", inbox / "00003.bin")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1] == f"OK 2 of {out['chunks_total']} chunk(s) verified (2.0 KiB)"


def test_rejects_renamed_chunk(arriving: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle, inbox, trust = arriving
    renamed = tmp_path / "renamed" / "00003.bin"
    renamed.parent.mkdir()
    shutil.copy(inbox / "00002.bin", renamed)
    assert renamed.read_bytes() != (inbox / "00003.bin").read_bytes()
    code, out = run_json("verify", bundle, "--trust", trust, "--chunk", renamed)
    assert code == 3
    message = assert_error(out, code=3, kind="integrity", subject="chunks/00003.bin")
    assert message == "chunks/00003.bin does not match its sha256 hash in the manifest"


def test_rejects_chunk_of_another_bundle(arriving: tuple[Path, Path, Path], make_key: Callable[[str], KeyPair],
                                        make_bundle: Callable[..., Path]) -> None:
    bundle, _, trust = arriving
    other = make_bundle(make_key("other"), files={"w.bin": noise(8000, seed=2)})
    code, out = run_json("verify", bundle, "--trust", trust, "--chunk", other / "chunks" / "00002.bin")
    assert code == 3
    message = assert_error(out, code=3, kind="integrity", subject="chunks/00002.bin")
    assert "does not match its sha256 hash" in message


def test_rejects_file_that_is_no_chunk_name_of_the_bundle(arriving: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle, inbox, trust = arriving
    stray = tmp_path / "99999.bin"
    shutil.copy(inbox / "00000.bin", stray)
    code, out = run_json("verify", bundle, "--trust", trust, "--chunk", stray)
    assert code == 3
    message = assert_error(out, code=3, kind="integrity", subject="99999.bin")
    assert message == "99999.bin is not a chunk of this bundle"


@pytest.mark.parametrize("change", ["truncated", "extended"])
def test_rejects_chunk_of_wrong_length(arriving: tuple[Path, Path, Path], change: str) -> None:
    bundle, inbox, trust = arriving
    chunk = inbox / "00001.bin"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-1] if change == "truncated" else data + b"\0")
    code, out = run_json("verify", bundle, "--trust", trust, "--chunk", chunk)
    assert code == 3
    message = assert_error(out, code=3, kind="integrity", subject="chunks/00001.bin")
    assert ("is truncated: 1023 of 1024 bytes" if change == "truncated" else "is longer than") in message


def test_rejects_chunk_checked_against_an_untrusted_manifest(arriving: tuple[Path, Path, Path],
                                                             make_key: Callable[[str], KeyPair],
                                                             make_trust: Callable[..., Path]) -> None:
    bundle, inbox, _ = arriving
    stranger = make_trust(make_key("stranger"), name="stranger-trust")
    code, out = run_json("verify", bundle, "--trust", stranger, "--chunk", inbox / "00000.bin")
    assert code == 4
    assert "untrusted" in assert_error(out, code=4, kind="trust", subject="signatures")


def test_rejects_chunks_missing_when_verifying_the_whole_bundle(arriving: tuple[Path, Path, Path]) -> None:
    bundle, _, trust = arriving
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 3
    assert assert_error(out, code=3, kind="integrity", subject="chunks") == "bundle has no chunks/ directory"
