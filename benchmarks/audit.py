#!/usr/bin/env python3
"""The transparency log: ``benchmarks/run.py --only audit`` (docs/benchmarks.md, "Audit"; docs/audit.md).

Measured in one run, through the ``gapship`` command unless said otherwise:

  append     100,000 inference records (about 550 bytes each) piped into ``gapship audit append``,
             start-up included, page cache dropped before each round, median of N rounds, at several
             ``--max-batch`` sizes; contenders in the same run: the same bytes written by ``cat`` and
             made durable by ``sync --data`` (what the disk allows), and the chained log's own append
             (installer/host/audit.py: one fsync per record, as the installer writes)
  latency    records offered at a fixed rate through a pipe with ``--ack``: for each record, the time
             from its write into the pipe to the acknowledgement of its batch; p50 and p99, at two
             (max-batch, max-delay) settings
  tree       logs of 10^6 and 10^7 records: ``gapship audit checkpoint`` time (start-up included),
             inclusion and consistency proof sizes, and the time to compute (from the node store) and
             verify one (library calls, median of many)
  export     ``gapship audit export --since`` of the 100,000 records, its size scaled to a million
             records, and the vendor's ``gapship audit verify --since`` time

Public tools only: python, gapship, cat, sync.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from run import drop_caches, sync  # benchmarks/run.py, beside this script (it imports this module lazily)

TARGET_RATE = 50_000  # durable records per second through `gapship audit append` (issue 20)


def _drop_caches() -> bool:
    """Flush, then empty the page cache (run.py's, which needs root): the same state for every contender."""
    sync()
    return drop_caches()


def _clean(log: Path) -> None:
    log.unlink(missing_ok=True)
    shutil.rmtree(log.with_name(log.name + ".tree"), ignore_errors=True)


def _timed(argv: Sequence[str], *, stdin: Path | None = None) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the child) and stdout of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(stdin or os.devnull, "rb") as f:
        done = subprocess.run(list(argv), stdin=f, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"benchmark command failed (exit {done.returncode}): {' '.join(argv)}\n{done.stderr[-2000:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, done.stdout


def inference_lines(n: int, start: int = 0) -> bytes:
    out = []
    for i in range(start, start + n):
        out.append(json.dumps({
            "kind": "inference", "time": "2026-12-04T19:30:20Z",
            "bundle": {"name": "demo-model", "version": "1.0.0", "manifest_digest": "sha256:" + "ab" * 32},
            "model": "tiny", "site": "site-a", "request_id": f"req-{i:08d}", "caller": "svc-frontend",
            "outcome": "served", "safeguards": ["input-filter", "output-filter"],
            "prompt_sha256": "sha256:" + hashlib.sha256(b"p%d" % i).hexdigest(),
            "response_sha256": "sha256:" + hashlib.sha256(b"r%d" % i).hexdigest()}))
    return ("\n".join(out) + "\n").encode()


def _append_case(work: Path, gapship: list[str], records: Path, n: int, rounds: int, batches: Sequence[int],
                 say: Callable[[str], None]) -> dict[str, object]:
    rows: dict[str, dict[str, float]] = {}
    dropped = True

    def measure(name: str, argv_for: Callable[[Path], list[str]], count: int, stdin: Path | None) -> None:
        nonlocal dropped
        walls, cpus = [], []
        for r in range(rounds):
            log = work / f"append-{len(rows)}-{r}.jsonl"
            _clean(log)
            dropped = _drop_caches() and dropped
            wall, cpu, _ = _timed(argv_for(log), stdin=stdin)
            walls.append(wall)
            cpus.append(cpu)
            _clean(log)
        med = statistics.median(walls)
        rows[name] = {"records": count, "median_s": round(med, 3), "records_per_s": round(count / med),
                      "cpu_s": round(statistics.median(cpus), 3)}
        say(f"  {name}: {count / med:,.0f} records/s (median {med:.3f} s, CPU {statistics.median(cpus):.2f} s)")

    for b in batches:
        measure(f"gapship audit append --max-batch {b}",
                lambda log, b=b: [*gapship, "audit", "append", "--log", str(log), "--max-batch", str(b),
                                  "--max-delay", "1000"], n, records)
    measure("cat > log && sync --data log (the disk's bound)",
            lambda log: ["sh", "-c", f'cat > "{log}" && sync --data "{log}"'], n, records)
    few = min(n, 2000)
    chained = ("import sys; from pathlib import Path; from gapship.installer.host.audit import AuditLog\n"
               "log = AuditLog.open(Path(sys.argv[1]))\n"
               f"for i in range({few}): log.append({{'kind': 'inference', 'request_id': str(i)}})\n")
    measure("chained audit log, one fsync per record (installer/host/audit.py)",
            lambda log: [sys.executable, "-c", chained, str(log)], few, None)
    best = max(v["records_per_s"] for k, v in rows.items() if k.startswith("gapship"))
    return {"rows": rows, "page_cache_dropped": dropped, "target_records_per_s": TARGET_RATE,
            "best_records_per_s": best, "met": best >= TARGET_RATE}


def _latency_case(work: Path, gapship: list[str], rate: int, seconds: float,
                  settings: Sequence[tuple[int, int]]) -> dict[str, object]:
    out: dict[str, object] = {}
    chunk = 50
    for batch, delay in settings:
        log = work / "latency.jsonl"
        _clean(log)
        proc = subprocess.Popen([*gapship, "audit", "append", "--log", str(log), "--ack", "--max-batch", str(batch),
                                 "--max-delay", str(delay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        total = int(rate * seconds) // chunk * chunk
        sent: list[float] = []
        acks: list[tuple[int, float]] = []

        def read(stdout=proc.stdout) -> None:  # type: ignore[no-untyped-def]
            for line in stdout:
                parts = line.split()
                if parts and parts[0] == b"ack":
                    acks.append((int(parts[2]), time.perf_counter()))

        reader = threading.Thread(target=read)
        reader.start()
        start = time.perf_counter()
        for k in range(0, total, chunk):
            due = start + k / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            proc.stdin.write(inference_lines(chunk, k))
            proc.stdin.flush()
            sent.append(time.perf_counter())
        proc.stdin.close()
        proc.wait()
        reader.join()
        latencies = []
        j = 0
        for k, t_sent in enumerate(sent):
            last = (k + 1) * chunk  # the chunk's last record: the latest of the chunk to be acknowledged
            while j < len(acks) and acks[j][0] < last:
                j += 1
            if j < len(acks):
                latencies.extend([acks[j][1] - t_sent] * chunk)
        latencies.sort()
        q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
        out[f"--max-batch {batch} --max-delay {delay}"] = {
            "offered_records_per_s": rate, "records": total, "p50_ms": round(q[49] * 1000, 2),
            "p99_ms": round(q[98] * 1000, 2), "batches": len(acks)}
        _clean(log)
    return out


def _tree_case(work: Path, gapship: list[str], sizes: Sequence[int], rounds: int,
               say: Callable[[str], None]) -> dict[str, object]:
    from gapship.installer.crypto import merkle
    from gapship.installer.host.tlog import TransparencyLog

    out: dict[str, object] = {}
    key = work / "host.key"
    for size in sizes:
        log = work / f"tree-{size}.jsonl"
        _clean(log)
        say(f"  building a log of {size:,} records ...")
        proc = subprocess.Popen([*gapship, "audit", "append", "--log", str(log), "--max-batch", "65536",
                                 "--max-delay", "1000"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert proc.stdin is not None
        build_start = time.perf_counter()
        step = 100_000
        for k in range(0, size, step):
            proc.stdin.write(b"".join(b'{"i":%d}\n' % i for i in range(k, min(size, k + step))))
        proc.stdin.close()
        if proc.wait():
            raise SystemExit("building the tree failed")
        build_s = time.perf_counter() - build_start
        walls = []
        for r in range(rounds):
            _drop_caches()
            cp = work / f"cp-{size}-{r}"
            cp.unlink(missing_ok=True)
            walls.append(_timed([*gapship, "audit", "checkpoint", "--log", str(log), "--out", str(cp),
                                 "--host-key", str(key)])[0])
        rng = random.Random(size)
        with TransparencyLog.open(log) as t:
            root = t.root()
            leaves = [rng.randrange(size) for _ in range(200)]
            start = time.perf_counter()
            proofs = [(i, t.inclusion_proof(i)) for i in leaves]
            make_incl = (time.perf_counter() - start) / len(leaves)
            hashes = [merkle.leaf_hash(t.leaf_line(i)) for i in leaves]
            start = time.perf_counter()
            for (i, p), h in zip(proofs, hashes):
                merkle.verify_inclusion(h, i, size, p, root)
            verify_incl = (time.perf_counter() - start) / len(leaves)
            old = size // 2 + 1
            start = time.perf_counter()
            cons = t.consistency_proof(old)
            make_cons = time.perf_counter() - start
            old_root = t.root(old)
            start = time.perf_counter()
            for _ in range(200):
                merkle.verify_consistency(old, size, old_root, root, cons)
            verify_cons = (time.perf_counter() - start) / 200
        out[str(size)] = {
            # the first checkpoint of a log checks its whole node store against the records; the later
            # ones only what was appended since (none here): both are reported
            "build_s": round(build_s, 2), "checkpoint_median_s": round(statistics.median(walls), 3),
            "first_checkpoint_s": round(walls[0], 3),
            "inclusion_proof_bytes": 32 * len(proofs[0][1]),
            "inclusion_make_ms": round(make_incl * 1000, 3), "inclusion_verify_ms": round(verify_incl * 1000, 3),
            "consistency_from": old, "consistency_proof_bytes": 32 * len(cons),
            "consistency_make_ms": round(make_cons * 1000, 3), "consistency_verify_ms": round(verify_cons * 1000, 3),
            "store_bytes": sum(p.stat().st_size for p in log.with_name(log.name + ".tree").glob("*") if p.is_file()),
        }
        say(f"  {size:,}: checkpoint {statistics.median(walls):.3f} s, inclusion proof {32 * len(proofs[0][1])} B")
        _clean(log)
    return out


def _export_case(work: Path, gapship: list[str], records: Path, n: int) -> dict[str, object]:
    log, key, cp0, exp = work / "export.jsonl", work / "host.key", work / "cp0", work / "export.gz"
    _clean(log)
    for f in (cp0, exp, work / "cp1"):
        f.unlink(missing_ok=True)
    _timed([*gapship, "audit", "checkpoint", "--log", str(log), "--out", str(cp0), "--host-key", str(key)])
    _timed([*gapship, "audit", "append", "--log", str(log), "--max-delay", "1000"], stdin=records)
    export_s = _timed([*gapship, "audit", "export", "--log", str(log), "--since", str(cp0), "--out", str(exp),
                       "--host-key", str(key)])[0]
    _drop_caches()
    verify_s = _timed([*gapship, "audit", "verify", "--export", str(exp), "--pubkey", str(key.with_suffix(".pub")),
                       "--since", str(cp0), "--save-checkpoint", str(work / "cp1")])[0]
    size = exp.stat().st_size
    raw = log.stat().st_size
    _clean(log)
    return {"records": n, "export_bytes": size, "log_bytes": raw, "export_bytes_per_million": round(size * 1e6 / n),
            "compression_ratio": round(raw / size, 1), "export_s": round(export_s, 3), "verify_s": round(verify_s, 3),
            "verify_records_per_s": round(n / verify_s)}


def benchmark_audit(args: argparse.Namespace, work: Path, gapship: list[str],
                    say: Callable[[str], None]) -> dict[str, object]:
    smoke = bool(args.smoke)
    n = 2_000 if smoke else 100_000
    records = work / "records.jsonl"
    say(f"generating {n:,} inference records ...")
    records.write_bytes(inference_lines(n))
    say("append throughput ...")
    append = _append_case(work, gapship, records, n, args.rounds, (256, 8192) if smoke else (256, 1024, 8192), say)
    say("latency at a fixed offered rate ...")
    latency = _latency_case(work, gapship, rate=5_000 if smoke else 20_000, seconds=0.4 if smoke else 3.0,
                            settings=((256, 2), (8192, 10)))
    say("tree: checkpoints and proofs ...")
    tree = _tree_case(work, gapship, (10_000,) if smoke else (1_000_000, 10_000_000), args.rounds, say)
    say("export ...")
    export = _export_case(work, gapship, records, n)
    return {"audit": {"append": append, "latency": latency, "tree": tree, "export": export}}


def render(report: dict[str, object]) -> str:
    a = report["audit"]
    assert isinstance(a, dict)
    lines = ["| contender | records | median s | records/s | CPU s |", "|---|---:|---:|---:|---:|"]
    for name, row in a["append"]["rows"].items():
        lines.append(f"| {name} | {row['records']} | {row['median_s']} | {row['records_per_s']:,} | {row['cpu_s']} |")
    met = "met" if a["append"]["met"] else "MISSED"
    lines += ["", f"- [{met}] durable records/s through `gapship audit append` >= {TARGET_RATE:,}: "
                  f"{a['append']['best_records_per_s']:,}", "",
              "| setting | offered records/s | p50 ms | p99 ms | batches |", "|---|---:|---:|---:|---:|"]
    for name, row in a["latency"].items():
        lines.append(f"| {name} | {row['offered_records_per_s']:,} | {row['p50_ms']} | {row['p99_ms']} | {row['batches']} |")
    lines += ["", "| records | checkpoint s | inclusion proof B | make ms | verify ms | consistency proof B | make ms "
                  "| verify ms | node store MiB |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size, row in a["tree"].items():
        lines.append(f"| {int(size):,} | {row['checkpoint_median_s']} | {row['inclusion_proof_bytes']} | "
                     f"{row['inclusion_make_ms']} | {row['inclusion_verify_ms']} | {row['consistency_proof_bytes']} | "
                     f"{row['consistency_make_ms']} | {row['consistency_verify_ms']} | "
                     f"{row['store_bytes'] / 2**20:.0f} |")
    e = a["export"]
    lines += ["", f"export of {e['records']:,} records: {e['export_bytes']:,} bytes ({e['compression_ratio']}x smaller "
                  f"than the log), {e['export_bytes_per_million']:,} bytes per million records; export "
                  f"{e['export_s']} s, vendor's verify {e['verify_s']} s ({e['verify_records_per_s']:,} records/s)"]
    return "\n".join(lines)
