"""Parity benchmark (``benchmarks/run.py --only parity``; docs/benchmarks.md, issue 14).

On one generated payload of incompressible files, over several rounds, medians of:

  build          gapship build                  vs  gapship build --parity 10%    (target: <= 1.25x)
  verify         gapship verify, no parity/     vs  gapship verify with parity/   (parity chunks at the
                                                    same speed as data chunks: bytes/s, ratio ~1)
  repair         gapship repair, one lost chunk per group  vs  gapship verify of the same bundle
                                                    (throughput over the payload; target >= 0.5x)
  encode         zfec vs the pure-Python reference of the same code (installer/bundle/fec.py), in
                 process, one group of k = 40, m = 4 (the 10% group)

Public tools only (python and gapship). The page cache is warm for every contender (inputs read
once before each timed run), and each run's output is removed and synced untimed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MiB = 1024**2


def _median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def _tree_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def benchmark(args: Any, work: Path, say: Callable[[str], None], *, gapship: list[str], run_timed: Any,
              make_dataset: Any, large_sizes: Any, sync: Callable[[], None],
              warm: Callable[[Sequence[Path]], None]) -> dict[str, object]:
    for sub in ("keys", "trust", "data", "bundles", "logs"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir()
    log = work / "logs" / "parity.log"
    run_timed([*gapship, "keygen", "bench", "--out-dir", str(work / "keys")], log=log)
    shutil.copy(work / "keys" / "bench.pub", work / "trust" / "bench.pub")
    key, trust = work / "keys" / "bench.key", work / "trust"
    say(f"generating payload in {work} ...")
    ds = make_dataset(work / "data" / "large", "large", large_sizes(args.size, args.files))
    plain, with_parity = work / "bundles" / "plain", work / "bundles" / "parity"
    build = [*gapship, "build", str(ds.spec), "--key", str(key), "--chunk-size", str(args.chunk_size), "--no-progress"]
    times: dict[str, list[float]] = {"build": [], "build --parity 10%": [], "verify": [], "verify with parity": [],
                                     "repair 1 chunk per group": [], "verify (same bundle)": []}
    rss: dict[str, float] = {}

    def timed(name: str, argv: list[str], inputs: Sequence[Path]) -> None:
        sync()
        warm(inputs)
        sample = run_timed(argv, log=log)
        times[name].append(sample.seconds)
        rss[name] = max(rss.get(name, 0.0), sample.peak_rss_kib / 1024)

    sources = _tree_files(ds.root)
    for r in range(args.rounds):
        say(f"parity round {r + 1}/{args.rounds}: build")
        for name, out, extra in (("build", plain, []), ("build --parity 10%", with_parity, ["--parity", "10%"]))[::1 if r % 2 == 0 else -1]:
            shutil.rmtree(out, ignore_errors=True)
            sync()
            timed(name, [*build, "--out", str(out), *extra], sources)
    plain_files, parity_files = _tree_files(plain), _tree_files(with_parity)
    layout = __import__("json").loads((with_parity / "parity" / "layout.json").read_bytes())
    groups = len(layout["groups"])
    parity_bytes = len(layout["parity"]) * layout["chunk_size"]
    payload = sum(p.stat().st_size for p in (plain / "chunks").iterdir())
    for r in range(args.rounds):
        say(f"parity round {r + 1}/{args.rounds}: verify, repair")
        timed("verify", [*gapship, "verify", str(plain), "--trust", str(trust), "--no-progress"], plain_files)
        timed("verify with parity", [*gapship, "verify", str(with_parity), "--trust", str(trust), "--no-progress"],
              parity_files)
        timed("verify (same bundle)", [*gapship, "verify", str(with_parity), "--trust", str(trust), "--no-progress"],
              parity_files)
        for g in range(groups):  # one lost chunk per group, untimed
            (with_parity / "chunks" / f"{g:05d}.bin").unlink()
        timed("repair 1 chunk per group", [*gapship, "repair", str(with_parity), "--trust", str(trust), "--no-progress"],
              _tree_files(with_parity))
    med = {k: _median(v) for k, v in times.items()}
    encode = _encode_speeds(min(args.chunk_size, 4 * MiB))
    ratios = {
        "build --parity 10% / build (time)": med["build --parity 10%"] / med["build"],
        "verify with parity / verify (bytes per second)": ((payload + parity_bytes) / med["verify with parity"])
                                                          / (payload / med["verify"]),
        "repair / verify (throughput over the payload)": med["verify (same bundle)"] / med["repair 1 chunk per group"],
        "zfec / reference encode": encode["zfec MB/s"] / encode["reference MB/s"],
    }
    targets = [
        {"target": "build --parity 10% at most 1.25x the time of build", "limit": 1.25,
         "value": ratios["build --parity 10% / build (time)"],
         "met": ratios["build --parity 10% / build (time)"] <= 1.25},
        {"target": "repair of one lost chunk per group at least 0.5x the throughput of verify", "limit": 0.5,
         "value": ratios["repair / verify (throughput over the payload)"],
         "met": ratios["repair / verify (throughput over the payload)"] >= 0.5},
        {"target": "parity chunks verified at the speed of data chunks (ratio about 1)", "limit": 0.9,
         "value": ratios["verify with parity / verify (bytes per second)"],
         "met": ratios["verify with parity / verify (bytes per second)"] >= 0.9},
    ]
    return {"settings": {"payload_bytes": payload, "parity_bytes": parity_bytes, "groups": groups,
                         "chunk_size": args.chunk_size, "rounds": args.rounds, "nproc": os.cpu_count()},
            "medians_s": med, "seconds": times, "peak_rss_mib": rss, "encode": encode, "ratios": ratios,
            "targets": targets}


def _encode_speeds(block: int) -> dict[str, float]:
    from gapship.installer.bundle.fec import ReferenceCodec, ZfecCodec

    k, m = 40, 4
    data = [os.urandom(block) for _ in range(k)]
    out = {}
    for name, codec in (("zfec", ZfecCodec(k, m)), ("reference", ReferenceCodec(k, m))):
        start = time.perf_counter()
        codec.encode(data)
        out[f"{name} MB/s"] = k * block / (time.perf_counter() - start) / 1e6
    return out


def render(report: dict[str, Any]) -> str:
    lines = ["| step | median s | peak RSS MiB |", "|---|---|---|"]
    for name, value in report["medians_s"].items():
        lines.append(f"| {name} | {value:.3f} | {report['peak_rss_mib'][name]:.0f} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in report["ratios"].items()]
    lines += ["", "| target | limit | value | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['limit']} | {t['value']:.2f} | {t['met']} |" for t in report["targets"]]
    enc = report["encode"]
    lines += ["", f"encode k=40 m=4: zfec {enc['zfec MB/s']:.0f} MB/s, pure-Python reference "
                  f"{enc['reference MB/s']:.0f} MB/s", f"settings: {report['settings']}"]
    return "\n".join(lines)
