"""benchmarks/run.py must keep working: a seconds-long --smoke run, judged on the shape of what it
prints, never on the timings (docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
STEPS = {(d, s) for d in ("large", "small") for s in ("build", "verify", "install")} | {("deps", "install")}
BASELINES = {
    "build": {"tar -c | sha256sum", "tar -c | openssl dgst -sha256"},
    "verify": {"sha256sum -c", "openssl dgst -sha256"},
    "install": {"tar -x", "tar -x; sync", "three-pass (sha256sum -c; tar -x; sha256sum -c)"},
}
DEPS = {"gapship install --compile", "python -m venv && pip install --no-index"}  # and uv's three, when uv is there
UV_DEPS = {"uv venv && uv pip install --offline (empty cache)", "uv venv && uv pip install --offline (empty cache); sync",
           "uv venv && uv pip install --offline --compile-bytecode (empty cache)"}


def smoke(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--workdir", str(tmp_path / "work"), *args],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    data: dict[str, object] = json.loads(smoke(tmp_path_factory.mktemp("bench"), "--json").stdout)
    return data


@pytest.mark.slow  # runs benchmarks/run.py --smoke
def test_json_report_has_every_step_contender_and_target(report: dict[str, object]) -> None:
    rows: list[dict[str, object]] = report["results"]  # type: ignore[assignment]
    assert {(r["dataset"], r["step"]) for r in rows} == STEPS
    for dataset, step in STEPS:
        mine = [r for r in rows if (r["dataset"], r["step"]) == (dataset, step)]
        assert [r["contender"] for r in mine if r["gapship"]] == [f"gapship {step}"]
        names = {r["contender"] for r in mine if not r["gapship"]}
        assert (DEPS if dataset == "deps" else BASELINES[step]) <= names, names
        if step == "verify":
            assert any(str(n).startswith("parallel SHA-256 limit") for n in names)
        if (dataset, step) == ("large", "install"):
            assert any(str(n).startswith("durable write limit (4x dd") for n in names)
    for r in rows:
        assert isinstance(r["median_s"], float) and r["median_s"] > 0
        assert len(r["seconds"]) == 1  # type: ignore[arg-type]
        assert r["peak_rss_mib"] > 0  # type: ignore[operator]
    targets = report["targets"]
    assert [t["target"] for t in targets][-1].startswith("peak RSS")  # type: ignore[index]
    uv = any(str(r["contender"]).startswith("uv ") for r in rows)
    if uv:  # the ; sync row is for reference: it has no target
        assert {str(r["contender"]) for r in rows if str(r["contender"]).startswith("uv ")} == UV_DEPS
    assert len(targets) == 10 + (4 if uv else 2)  # type: ignore[arg-type]
    assert "small made-up wheels" in str(report["settings"]["deps_wheels"])  # type: ignore[index]
    bounds: list[dict[str, object]] = report["bounds"]  # type: ignore[assignment]
    assert [b["figure"] for b in bounds] == [_load_script().LIMIT_SHARE, _load_script().LIMIT_VS_TAR,
                                             _load_script().STARTUP_SHARE]
    assert all(isinstance(b["value"], float) and b["value"] > 0 for b in bounds)
    machine = report["machine"]
    assert {"nproc", "cpu", "filesystem", "python"} <= set(machine)  # type: ignore[arg-type]
    settings: dict[str, object] = report["settings"]  # type: ignore[assignment]
    assert settings["cache"] == "warm" and "synced after each run" in str(settings["cache_note"])


@pytest.mark.slow  # runs benchmarks/run.py --smoke
def test_table_output_is_a_markdown_table(tmp_path: Path) -> None:
    out = smoke(tmp_path, "--only", "small").stdout
    lines = out.splitlines()
    header = lines.index("| data | step | contender | median s | MB/s | CPU s | peak RSS MiB | gapship speed-up |")
    rows = [line for line in lines[header + 2:] if line.startswith("|")]
    assert len(rows) == 3 + 4 + 5  # install: gapship, tar -x, tar -x; sync, three-pass, the start-up
    assert all(line.replace("\\|", "").count("|") == 9 for line in rows), rows
    assert any(line.startswith("page cache:") for line in lines)
    assert not (tmp_path / "work" / "out").exists() or not any((tmp_path / "work" / "out").iterdir())


def _row(contender: str, seconds: float, *, gapship: bool = False) -> dict[str, object]:
    return {"dataset": "large", "step": "install", "contender": contender, "median_s": seconds, "gapship": gapship}


def test_bounds_compare_the_install_and_tar_with_the_durable_write_limit() -> None:
    bench = _load_script()
    rows = [_row("gapship install", 4.0, gapship=True), _row("tar -x", 2.8), _row("tar -x; sync", 5.2),
            _row("durable write limit (4x dd oflag=direct conv=fsync)", 2.5)]
    got = {b["figure"]: b["value"] for b in bench.bounds(rows)}
    assert got == {bench.LIMIT_SHARE: 0.625, bench.LIMIT_VS_TAR: 1.12}
    assert bench.bounds(rows[:3]) == []  # no limit row (small data only): nothing to say


def test_small_file_bound_sets_start_up_and_flush_against_the_target_time() -> None:
    bench = _load_script()
    rows = [{**_row(name, seconds), "dataset": "small"}
            for name, seconds in (("gapship install", 1.0), ("tar -x", 0.4), ("tar -x; sync", 0.6),
                                  (bench.STARTUP, 0.15))]
    # start-up 0.15 s + flush 0.2 s against the 0.5 s that 0.8x tar -x allows
    assert bench.bounds(rows) == [{"figure": bench.STARTUP_SHARE, "value": 0.7}]
    assert bench.bounds(rows[:3]) == []


def _load_script():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("gapship_bench_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module
