"""benchmarks/run.py --only oci must keep working: a seconds-long --smoke run, judged on the shape of
what it reports (the timings themselves are not asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


@pytest.mark.slow  # two registries, a build, three pushes and seven installs, in subprocesses
@pytest.mark.skipif(shutil.which("docker-registry") is None or shutil.which("openssl") is None,
                    reason="needs docker-registry and openssl (.ci/run installs docker-registry)")
def test_oci_smoke_reports_push_install_and_concurrent(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--only", "oci", "--json", "--workdir",
                           str(tmp_path / "work")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    d = json.loads(done.stdout)["oci"]
    assert set(d["push"]["median_s"]) == {"push, every blob (tls)", "second push, nothing sent (tls)"}
    assert set(d["install"]["median_s"]) == {"directory", "oci:// plain HTTP", "oci:// TLS"}
    assert set(d["install"]["ratio_vs_directory"]) == {"oci:// plain HTTP", "oci:// TLS"}
    assert d["concurrent"]["installs"] == 4 and d["concurrent"]["median_wall_s"] > 0
