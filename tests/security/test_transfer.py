"""Damage in transfer (../shared/guides/security.md, "Integrity and authenticity"): every chunk of a
real bundle missing, truncated, extended, bit-flipped, swapped with the same-index chunk of another
bundle, renamed, or reordered; and a chunk that changes while the installer is reading it.

No key is involved: the manifest stays as signed, only the chunk files change. The expected outcome is
always exit 3 naming the chunk, nothing changed under the prefix, 1.0.0 still active.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from attack_site import VICTIM_CHUNKS as CHUNKS, Site, build_real_bundle, chunk_file, run_harness
from gapship_testing import run_json
from hostile import craft, snapshot, standard_payload

def _chunk(bundle: Path, index: int) -> Path:
    return chunk_file(bundle, index)


def _missing(b: Path, i: int, other: Path) -> None:
    _chunk(b, i).unlink()


def _truncated(b: Path, i: int, other: Path) -> None:
    data = _chunk(b, i).read_bytes()
    _chunk(b, i).write_bytes(data[:-1])


def _extended(b: Path, i: int, other: Path) -> None:
    with _chunk(b, i).open("ab") as f:
        f.write(b"\0")


def _bit_flipped(b: Path, i: int, other: Path) -> None:
    data = bytearray(_chunk(b, i).read_bytes())
    data[len(data) // 2] ^= 0x10
    _chunk(b, i).write_bytes(bytes(data))


def _swapped_with_other_bundle(b: Path, i: int, other: Path) -> None:
    shutil.copyfile(_chunk(other, i), _chunk(b, i))


def _renamed_away(b: Path, i: int, other: Path) -> None:
    _chunk(b, i).rename(_chunk(b, i).with_name(f"{i:05d}.bin.part"))


def _reordered(b: Path, i: int, other: Path) -> None:
    j = (i + 1) % CHUNKS
    tmp = _chunk(b, i).with_name("swap")
    _chunk(b, i).rename(tmp)
    _chunk(b, j).rename(_chunk(b, i))
    tmp.rename(_chunk(b, j))


def _duplicated(b: Path, i: int, other: Path) -> None:
    shutil.copyfile(_chunk(b, (i + 1) % CHUNKS), _chunk(b, i))


DAMAGE: list[tuple[Callable[[Path, int, Path], None], str]] = [
    (_missing, "is missing"),
    (_truncated, "is truncated"),
    (_extended, "is longer than"),
    (_bit_flipped, "does not match its sha256 hash"),
    (_swapped_with_other_bundle, "does not match its sha256 hash"),
    (_renamed_away, "is missing"),
    (_reordered, "does not match its sha256 hash"),
    (_duplicated, "does not match its sha256 hash"),
]


@pytest.mark.parametrize("index", range(CHUNKS))
@pytest.mark.parametrize("damage", DAMAGE, ids=lambda d: d[0].__name__.strip("_"))
@pytest.mark.parametrize("command", ["install", "verify"])
def test_rejects_damaged_chunk(site: Site, victim: Path, victims: tuple[Path, Path], command: str,
                               damage: tuple[Callable[[Path, int, Path], None], str], index: int) -> None:
    hurt, problem = damage
    hurt(victim, index, victims[1])
    error = site.assert_refused(victim, code=3, needles=(problem,), command=command, next_run=command == "install")
    # a reordering damages two chunks; either may be reported first
    damaged = {index, (index + 1) % CHUNKS} if hurt is _reordered else {index}
    assert error["subject"] in {f"chunks/{i:05d}.bin" for i in damaged}, error
    assert error["message"].startswith(error["subject"] + " "), error


@pytest.mark.parametrize("index", [0, CHUNKS - 1])
def test_rejects_single_chunk_check_of_foreign_chunk(site: Site, victim: Path, victims: tuple[Path, Path],
                                                     index: int) -> None:
    """``verify --chunk``: the pipeline checks one arriving chunk alone, here one from another bundle."""
    _swapped_with_other_bundle(victim, index, victims[1])
    subject = f"chunks/{index:05d}.bin"
    code, out = run_json("verify", victim, "--trust", site.trust, "--chunk", _chunk(victim, index))
    assert code == 3, out
    assert out["error"]["subject"] == subject and "does not match" in out["error"]["message"]


def test_rejects_single_chunk_check_of_renamed_chunk(site: Site, victim: Path, tmp_path: Path) -> None:
    """A chunk arriving under its neighbour's name is checked by name, so its hash fails."""
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    shutil.copyfile(_chunk(victim, 1), arrived / "00002.bin")
    code, out = run_json("verify", victim, "--trust", site.trust, "--chunk", arrived / "00002.bin")
    assert code == 3, out
    assert out["error"]["subject"] == "chunks/00002.bin"


@pytest.mark.parametrize("command", ["install", "verify"])
def test_rejects_extra_chunk(site: Site, victim: Path, command: str) -> None:
    """A chunk file the manifest does not list (mixed in from another bundle, or left over)."""
    shutil.copyfile(_chunk(victim, 0), _chunk(victim, CHUNKS))
    subject = f"chunks/{CHUNKS:05d}.bin"
    site.assert_refused(victim, code=3, needles=(subject, "extra chunk"), subject=subject, command=command,
                        next_run=command == "install")


def test_rejects_chunk_replaced_by_symlink(site: Site, victim: Path, victims: tuple[Path, Path]) -> None:
    """A chunk that is a symlink (to the right bytes, even) is not a chunk: bundles hold regular files."""
    _chunk(victim, 2).unlink()
    _chunk(victim, 2).symlink_to(_chunk(victims[0], 2))
    site.assert_refused(victim, code=3, needles=("chunks/00002.bin", "symlink"), subject="chunks/00002.bin")


def test_rejects_file_changed_with_chunk_hashes_recomputed(site: Site) -> None:
    """A compromised build changes a file's bytes and re-signs matching chunk hashes, but the file's own
    hash in the manifest still says what was approved: the file is refused before it becomes visible."""
    payload = standard_payload({"config.json": b"{}\n", "weights.bin": b"approved weights " * 100})
    stream = bytearray(payload.end())
    entry = payload.components[0]["files"][1]
    stream[entry["offset"] + 5] ^= 0x20
    crafted = craft(bytes(stream), payload.components)
    site.assert_refused(site.write(crafted), code=3, needles=("'models/tiny/weights.bin'", "does not match"),
                        subject="models/tiny/weights.bin")


def test_rejects_chunk_changed_between_verify_and_install(site: Site, victim: Path) -> None:
    """Check-then-use: a bundle that verified and then changed on the media is refused by install,
    which checks what it reads itself (RAUC CVE-2020-25860)."""
    code, out = run_json("verify", victim, "--trust", site.trust)
    assert code == 0, out
    _bit_flipped(victim, 3, victim)
    site.assert_refused(victim, code=3, needles=("chunks/00003.bin",), subject="chunks/00003.bin")


# -- a chunk that changes while the installer reads it --------------------------------------------

BIG_CHUNK = 16 * 1024**2
BIG_WEIGHTS = bytes(range(256)) * (12 * 4096)


@pytest.fixture(scope="session")
def big_victim(tmp_path_factory: pytest.TempPathFactory, template) -> Path:
    """One 12 MiB chunk: the installer reads it in several pieces, so the media can change between them."""
    base = tmp_path_factory.mktemp("big-victim")
    files = {"config.json": b"{}\n", "weights.bin": BIG_WEIGHTS}
    return build_real_bundle(base, template.key, version="2.0.0", files=files, chunk_size=BIG_CHUNK)


def _harness(fault: str, arg: str, site: Site, bundle: Path) -> subprocess.CompletedProcess[str]:
    result = run_harness(fault, arg, site, bundle)
    assert isinstance(result, subprocess.CompletedProcess)
    return result


def _installed_exactly(site: Site) -> bool:
    """2.0.0 is active and holds exactly the signed bytes."""
    weights = site.home / "current" / "models/tiny/weights.bin"
    return str((site.home / "current").readlink()) == "2.0.0" and weights.read_bytes() == BIG_WEIGHTS


@pytest.mark.parametrize("where", ["ahead", "behind"])
def test_chunk_changed_in_place_while_installing(site: Site, big_victim: Path, tmp_path: Path, where: str) -> None:
    """After the installer's first read of the chunk, one byte of that chunk file is flipped in place:
    ahead of the reader (bytes it has yet to read) or behind it (bytes it has already written).
    The only safe outcomes: exit 3 with nothing changed, or the signed bytes installed; never the
    changed ones. The installer hashes what it writes and never reads twice, so today "ahead" fails
    the chunk hash and "behind" installs the bytes it hashed."""
    bundle = Path(shutil.copytree(big_victim, tmp_path / "bundle"))
    chunk = _chunk(bundle, 0).resolve()
    offset = 10 * 1024**2 if where == "ahead" else 1024**2
    before = snapshot(site.prefix)
    result = _harness("tamper-after-first-read", f"{chunk}:{offset}", site, bundle)
    assert _chunk(bundle, 0).read_bytes() != _chunk(big_victim, 0).read_bytes(), "the fault did not fire"
    if result.returncode == 0:
        assert _installed_exactly(site)
    else:
        assert result.returncode == 3, result
        assert '"subject": "chunks/00000.bin"' in result.stdout
        assert snapshot(site.prefix) == before
        site.assert_previous_intact()
        site.assert_next_run_succeeds()


def test_chunk_file_replaced_while_installing(site: Site, big_victim: Path, tmp_path: Path,
                                              victims: tuple[Path, Path]) -> None:
    """After the first read, another file is renamed over the chunk: the installer keeps reading the
    file it opened and hashed, and installs exactly the signed bytes."""
    bundle = Path(shutil.copytree(big_victim, tmp_path / "bundle"))
    chunk = _chunk(bundle, 0).resolve()
    impostor = tmp_path / "impostor.bin"
    impostor.write_bytes(b"\x00" * _chunk(bundle, 0).stat().st_size)
    result = _harness("replace-after-first-read", f"{chunk}:{impostor}", site, bundle)
    assert not impostor.exists(), "the fault did not fire"
    assert result.returncode == 0, result
    assert _installed_exactly(site)
    code, out = run_json("verify", bundle, "--trust", site.trust)
    assert code == 3 and out["error"]["subject"] == "chunks/00000.bin"
