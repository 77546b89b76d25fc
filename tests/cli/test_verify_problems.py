"""``gapship verify`` names every bad chunk in one pass (docs/cli.md, ``verify``; docs/pipeline.md).

A transfer that lost or damaged several chunks gets them all back in one answer, in text (one line per
chunk) and in ``--json`` (``problems``), so a pipeline asks again for all of them at once. The exit
code and the ``error`` object stay those of the first problem, as before the list existed; ``install``
still stops at the first bad chunk (it streams).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from gapship.bundler.build import build
from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.spec import load_spec
from gapship_testing import noise, run, run_json, write_spec
from safeguards_testing import isolated_host  # noqa: F401  (fixture)

CHUNK = 1024


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A bundle of at least 12 chunks and its trust directory."""
    base = tmp_path_factory.mktemp("problems")
    private, public, _ = keygen("release", base / "keys")
    trust = base / "trust"
    trust.mkdir()
    shutil.copy(public, trust)
    spec = write_spec(base / "src", {"weights.bin": noise(11 * CHUNK, seed=3)})
    bundle = base / "bundle"
    build(load_spec(spec), out=bundle, key=SigningKey.load(private), chunk_size=CHUNK)
    assert len(os.listdir(bundle / "chunks")) >= 12
    return bundle, trust


@pytest.fixture
def bundle(pristine: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine[0], tmp_path / "bundle"))


@pytest.fixture
def trust(pristine: tuple[Path, Path]) -> Path:
    return pristine[1]


def chunk(bundle: Path, index: int) -> Path:
    return bundle / "chunks" / f"{index:05d}.bin"


def damage_everything(bundle: Path) -> None:
    """One chunk of each kind of damage a transfer can do, out of order on purpose."""
    data = bytearray(chunk(bundle, 2).read_bytes())
    data[7] ^= 0xFF
    chunk(bundle, 2).write_bytes(data)  # damaged
    chunk(bundle, 4).unlink()  # missing
    chunk(bundle, 6).write_bytes(chunk(bundle, 6).read_bytes()[:100])  # truncated
    with chunk(bundle, 8).open("ab") as f:  # oversized
        f.write(b"more")
    chunk(bundle, 9).unlink()
    os.symlink(chunk(bundle, 10), chunk(bundle, 9))  # not a regular file
    chunk(bundle, 11).unlink()  # missing
    (bundle / "chunks" / "00099.bin").write_bytes(b"x")  # extra
    (bundle / "chunks" / "stray").write_bytes(b"x")  # extra


EXPECTED = [  # missing, then extra (the order check_chunk_names refuses in), then the rest in chunk order
    ("chunks/00004.bin", "missing", "chunks/00004.bin is missing"),
    ("chunks/00011.bin", "missing", "chunks/00011.bin is missing"),
    ("chunks/00099.bin", "extra", "chunks/00099.bin is not part of this bundle (extra chunk)"),
    ("chunks/stray", "extra", "chunks/stray is not part of this bundle (extra chunk)"),
    ("chunks/00002.bin", "damaged", "chunks/00002.bin does not match its sha256 hash in the manifest"),
    ("chunks/00006.bin", "truncated", f"chunks/00006.bin is truncated: 100 of {CHUNK} bytes"),
    ("chunks/00008.bin", "oversized", f"chunks/00008.bin is longer than the {CHUNK} bytes the manifest declares"),
    ("chunks/00009.bin", "not-regular", "chunks/00009.bin is a symlink; bundles hold regular files only"),
]


def test_verify_lists_every_missing_truncated_damaged_and_extra_chunk_in_json(bundle: Path, trust: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    damage_everything(bundle)
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 3
    problems: list[dict[str, Any]] = out["problems"]  # type: ignore[assignment]
    assert [(p["chunk"], p["problem"]) for p in problems] == [(c, k) for c, k, _ in EXPECTED]
    by_chunk = {p["chunk"]: p for p in problems}
    signed = {f"chunks/{c['name']}": (i, c) for i, c in enumerate(manifest["chunks"])}
    for name, p in by_chunk.items():
        if p["problem"] == "extra":
            assert p["index"] is None and p["expected_size"] is None and p["expected_hash"] is None
            continue
        index, entry = signed[name]
        assert (p["index"], p["expected_size"], p["expected_hash"]) == (index, entry["size"], entry["hash"])
    assert by_chunk["chunks/00004.bin"]["size"] is None
    assert by_chunk["chunks/00006.bin"]["size"] == 100
    assert by_chunk["chunks/00008.bin"]["size"] == CHUNK + 4
    damaged = by_chunk["chunks/00002.bin"]
    assert damaged["size"] == CHUNK and damaged["hash"] not in (None, damaged["expected_hash"])
    assert all(p["hash"] is None for p in problems if p["problem"] != "damaged")


def test_verify_keeps_the_first_problem_as_its_error_object(bundle: Path, trust: Path) -> None:
    """What verify said before it listed everything: exit 3 and the first missing chunk."""
    damage_everything(bundle)
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 3
    assert out["error"] == {"code": 3, "kind": "integrity", "message": "chunks/00004.bin is missing",
                            "subject": "chunks/00004.bin", "hint": None}
    assert out["ok"] is False


def test_verify_prints_one_line_per_bad_chunk(bundle: Path, trust: Path) -> None:
    damage_everything(bundle)
    result = run("verify", bundle, "--trust", trust)
    assert result.exit_code == 3 and result.stdout == ""
    n = len(EXPECTED)
    assert result.stderr.splitlines() == [
        "gapship: error: chunks/00004.bin is missing",
        *(f"gapship: bad chunk {i} of {n}: {message}" for i, (_, _, message) in enumerate(EXPECTED, 1)),
    ]


def test_verify_of_one_damaged_chunk_says_it_once(bundle: Path, trust: Path) -> None:
    chunk(bundle, 5).write_bytes(b"\0" * CHUNK)
    result = run("verify", bundle, "--trust", trust)
    assert result.exit_code == 3
    assert result.stderr.splitlines() == ["gapship: error: chunks/00005.bin does not match its sha256 hash in the manifest"]
    code, out = run_json("verify", bundle, "--trust", trust)
    assert [(p["chunk"], p["problem"]) for p in out["problems"]] == [("chunks/00005.bin", "damaged")]  # type: ignore[union-attr]


def test_verify_of_a_whole_bundle_reports_no_problems(bundle: Path, trust: Path) -> None:
    code, out = run_json("verify", bundle, "--trust", trust)
    assert code == 0 and out["problems"] == [] and out["chunks_checked"] == out["chunks_total"]


def test_install_still_stops_at_the_first_bad_chunk(bundle: Path, trust: Path, tmp_path: Path) -> None:
    damage_everything(bundle)
    code, out = run_json("install", bundle, "--trust", trust, "--prefix", tmp_path / "prefix")
    assert code == 3
    assert out["error"]["message"] == "chunks/00004.bin is missing"  # type: ignore[index]
    assert "problems" not in out


def test_verify_chunk_still_checks_the_chunks_it_is_given(bundle: Path, trust: Path) -> None:
    damage_everything(bundle)
    code, out = run_json("verify", bundle, "--trust", trust, "--chunk", chunk(bundle, 3))
    assert code == 0 and out["scope"] == "chunk" and out["chunks_checked"] == 1
    code, out = run_json("verify", bundle, "--trust", trust, "--chunk", chunk(bundle, 6))
    assert code == 3
    assert out["error"]["message"] == f"chunks/00006.bin is truncated: 100 of {CHUNK} bytes"  # type: ignore[index]


def test_verify_of_bad_chunks_on_a_site_host_logs_the_first(bundle: Path, trust: Path, tmp_path: Path,
                                                           isolated_host) -> None:  # type: ignore[no-untyped-def]
    """The audit record keeps the error object it always had (a site host also writes its default log,
    which isolated_host keeps in tmp_path)."""
    damage_everything(bundle)
    site = tmp_path / "site.toml"
    site.write_text('site_id = "test-site"\nsafeguards = ["inference-audit-log"]\n')
    log = tmp_path / "audit.jsonl"
    code, _ = run_json("verify", bundle, "--trust", trust, "--site-config", site, "--audit-log", log)
    assert code == 3
    record = json.loads(log.read_bytes().splitlines()[-1])
    assert record["decision"] == "refused"
    assert record["reason"]["message"] == "chunks/00004.bin is missing"


def test_problem_entries_have_exactly_the_documented_keys_and_kinds(bundle: Path, trust: Path) -> None:
    damage_everything(bundle)  # one chunk of every kind
    _, out = run_json("verify", bundle, "--trust", trust)
    problems: list[dict[str, Any]] = out["problems"]  # type: ignore[assignment]
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    rows = doc.split("| problem entry | type | meaning |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0].splitlines()
    cells = {row.split("|")[1].strip().strip("`"): row.split("|")[3] for row in rows}
    assert all(set(p) == set(cells) for p in problems)
    assert {p["problem"] for p in problems} == set(re.findall(r"`([a-z-]+)`", cells["problem"]))
