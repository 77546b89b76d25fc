"""benchmarks/run.py --only delta must keep working: a seconds-long --smoke run, judged on the shape of
what it reports and on the byte counts (exact, unlike the timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


@pytest.mark.slow  # builds three bundles and installs six times, in subprocesses
def test_delta_smoke_reports_crossing_install_and_disk(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--only", "delta", "--json", "--workdir",
                           str(tmp_path / "work")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    d = json.loads(done.stdout)["delta"]
    crossing = d["crossing"]
    assert crossing["met"] and crossing["delta_chunk_bytes"] < 1024 * 1024 < crossing["full_bytes"]
    install = d["install"]
    assert set(install["median_s"]) == {"full (copies)", "delta (copies)", "delta (default sharing)"}
    assert install["shared"]["delta (copies)"] == {"reflink": 0, "hardlink": 0, "copy": 4}
    disk = install["disk_bytes"]
    # Shared, two versions take about one version's room; copied, about two.
    assert disk["1.0.0 and 2.0.0, delta (default sharing)"] < 1.2 * disk["1.0.0 alone"]
    assert disk["1.0.0 and 2.0.0, delta (copies)"] > 1.8 * disk["1.0.0 alone"]
    assert "skipped" in d["reflink"] or d["reflink"]["shared"]["delta (default sharing)"]["reflink"] == 4
