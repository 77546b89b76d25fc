"""benchmarks/run.py --only audit must keep working: a seconds-long --smoke run, judged on the shape of
what it reports and on the sizes (exact, unlike the timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


@pytest.mark.slow  # a dozen gapship subprocesses and a 10,000-record log
def test_audit_smoke_reports_append_latency_tree_and_export(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--only", "audit", "--json", "--workdir",
                           str(tmp_path / "work")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    a = json.loads(done.stdout)["audit"]
    rows = a["append"]["rows"]
    assert {"gapship audit append --max-batch 256", "gapship audit append --max-batch 8192"} <= set(rows)
    assert all(r["records_per_s"] > 0 for r in rows.values())
    assert all(0 < v["p50_ms"] <= v["p99_ms"] for v in a["latency"].values())
    tree = a["tree"]["10000"]
    # at most ceil(log2(10,000)) = 14 hashes; fewer for a leaf in the tree's smaller right-hand subtrees
    assert tree["inclusion_proof_bytes"] % 32 == 0 and 8 * 32 <= tree["inclusion_proof_bytes"] <= 14 * 32
    assert tree["store_bytes"] >= 10_000 * (32 * 2 - 1) + 10_000 * 8
    assert a["export"]["records"] == 2000 and a["export"]["compression_ratio"] > 2
