"""Run the atheris targets in tests/fuzz/ for a short fixed time each (libFuzzer's -max_total_time),
seeded with valid inputs, and fail on any crash. Skipped, with the reason, where atheris has no wheel.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gapship.installer.kit import canonical_json
from hostile import craft, pax_header, raw_header, standard_payload

atheris = pytest.importorskip("atheris", reason="atheris is not installed here (it ships wheels for Linux x86-64 only)")

pytestmark = pytest.mark.slow  # each target fuzzes for SECONDS, plus atheris start-up
SECONDS = 4
HERE = Path(__file__).parent


def _manifest_seeds() -> list[bytes]:
    return [canonical_json(craft(standard_payload()).manifest),
            canonical_json(craft(standard_payload({"a": b"", "b/c": b"x" * 600}), chunk_size=512).manifest)]


def _header_seeds() -> list[bytes]:
    return [pax_header("models/tiny/weights.bin", 1000),
            pax_header("models/tiny/weights.bin", 1000, pax={"path": "models/tiny/weights.bin", "mtime": "1"}),
            raw_header(b"models/tiny/weights.bin", 1000),
            pax_header("models/tiny/" + "w" * 200, 1000)]


@pytest.mark.parametrize("target, seeds", [("fuzz_manifest.py", _manifest_seeds), ("fuzz_tarheader.py", _header_seeds)])
def test_fuzz_target_finds_no_crash(tmp_path: Path, target: str, seeds) -> None:  # type: ignore[no-untyped-def]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    argv = [sys.executable, str(HERE / target), f"-max_total_time={SECONDS}", "-max_len=8192", "-rss_limit_mb=2048",
            "-timeout=10", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(corpus)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS + 120, cwd=tmp_path)
    crashes = sorted(p.name for p in tmp_path.glob("*-*") if p.is_file())
    assert result.returncode == 0 and not crashes, (crashes, result.stderr[-4000:])
    assert "stat::number_of_executed_units" in result.stderr
