#!/usr/bin/env python3
"""Installing through an OCI registry: ``benchmarks/run.py --only oci`` (docs/oci.md, "Throughput").

One bundle of the large data set, pushed to CNCF distribution (Debian's ``docker-registry``) on
127.0.0.1, twice: plain HTTP (``--plain-http``, loopback) and TLS (a CA made with ``openssl``). Measured
in one run, medians of N rounds, page cache dropped before each timed install where allowed:

  push        ``gapship push`` of the whole bundle to a fresh repository (every blob sent), and a
              second push of the same bundle (nothing but the manifest sent)
  install     ``gapship install`` from the bundle directory, from ``oci://`` over plain HTTP and
              over TLS; throughput ratio registry / directory (target: at least 0.8)
  concurrent  four ``gapship install oci://`` (TLS) at once on this host from the one registry, into
              four prefixes: wall time and aggregate throughput

Public tools only: python, gapship, docker-registry, openssl.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from run import drop_caches, sync, write_random  # benchmarks/run.py, beside this script (it imports this module lazily)

MiB = 1024**2
POLICY = 'schema_version = 1\nprohibited_uses = ["weapons targeting"]\n\n[sites.bench]\nsafeguards = ["audit-log"]\n\n' \
         '[models.large]\nsites = ["bench"]\n'


def _run(argv: Sequence[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark command failed (exit {done.returncode}): {' '.join(argv)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def _drop_caches() -> bool:
    """Flush, then empty the page cache (run.py's, which needs root): the same state for every contender."""
    sync()
    return drop_caches()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(root: Path, gapship: list[str], *, size: int, files: int, chunk_size: int) -> tuple[Path, Path]:
    data = root / "data"
    (data / "model").mkdir(parents=True)
    each = size // files
    for i in range(files):
        write_random(data / "model" / f"shard-{i:02d}.bin", each)
    (data / "policy.toml").write_text(POLICY)
    (data / "spec.toml").write_text('[bundle]\nname = "bench-oci"\nversion = "1.0.0"\n\n[[model]]\nname = "large"\n'
                                    'source = "model"\n\n[safeguards]\nsource = "policy.toml"\n')
    _run([*gapship, "keygen", "bench", "--out-dir", str(root / "keys")])
    (root / "trust").mkdir()
    shutil.copy(root / "keys" / "bench.pub", root / "trust" / "bench.pub")
    bundle = root / "bundle"
    _run([*gapship, "build", str(data / "spec.toml"), "--out", str(bundle), "--key", str(root / "keys" / "bench.key"),
          "--chunk-size", str(chunk_size), "--no-progress"])
    return bundle, root / "trust"


def make_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it, with openssl."""
    folder.mkdir(parents=True)
    ca, ca_key, cert, key = folder / "ca.pem", folder / "ca.key", folder / "server.pem", folder / "server.key"
    _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
          "-subj", "/CN=bench CA", "-keyout", str(ca_key), "-out", str(ca)])
    _run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
          "-keyout", str(key), "-out", str(folder / "server.csr")])
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _run(["openssl", "x509", "-req", "-in", str(folder / "server.csr"), "-CA", str(ca), "-CAkey", str(ca_key),
          "-CAcreateserial", "-days", "2", "-extfile", str(folder / "ext.cnf"), "-out", str(cert)])
    return ca, cert, key


def start_registry(folder: Path, *, tls: tuple[Path, Path] | None) -> tuple[subprocess.Popen[bytes], str]:
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true", "storage:",
             "  filesystem:", f"    rootdirectory: {folder / 'storage'}", "http:", f"  addr: 127.0.0.1:{port}"]
    if tls:
        lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
    (folder / "config.yml").write_text("\n".join(lines) + "\n")
    log = open(folder / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"docker-registry did not start: {(folder / 'registry.log').read_text()[-1000:]}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/PID/stat), to show what the registry,
    on the same cores, costs each install."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def benchmark_oci(args: argparse.Namespace, work: Path, gapship: list[str],
                  say: Callable[[str], None]) -> dict[str, object]:
    if shutil.which("docker-registry") is None:
        return {"oci": {"skipped": "docker-registry is not installed (apt-get install docker-registry)"}}
    root = work / "oci"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    say(f"oci: building a {args.size // MiB} MiB bundle in {root} ...")
    bundle, trust = prepare(root, gapship, size=args.size, files=args.files, chunk_size=args.chunk_size)
    payload = sum(p.stat().st_size for p in (bundle / "chunks").iterdir())
    ca, cert, key = make_ca(root / "tls")
    procs = []
    try:
        plain_proc, plain = start_registry(root / "plain", tls=None)
        procs.append(plain_proc)
        tls_proc, tls = start_registry(root / "tls-registry", tls=(cert, key))
        procs.append(tls_proc)
        return {"oci": _measure(args, root, gapship, bundle, trust, payload, plain, tls, ca, say,
                                pids={"oci:// plain HTTP": plain_proc.pid, "oci:// TLS": tls_proc.pid})}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def _measure(args: argparse.Namespace, root: Path, gapship: list[str], bundle: Path, trust: Path, payload: int,
             plain: str, tls: str, ca: Path, say: Callable[[str], None], *, pids: dict[str, int]) -> dict[str, object]:
    jobs = ["--jobs", str(args.oci_jobs)]
    reach = {"plain": (plain, ["--plain-http"]), "tls": (tls, ["--ca-file", str(ca)])}
    pushes: dict[str, list[float]] = {"push, every blob (tls)": [], "second push, nothing sent (tls)": []}
    for r in range(args.rounds):
        say(f"oci: push round {r + 1} ...")
        ref = f"oci://{tls}/bench/round{r}:1.0"
        pushes["push, every blob (tls)"].append(_run([*gapship, "push", str(bundle), ref, *reach["tls"][1], *jobs,
                                                      "--no-progress"]))
        pushes["second push, nothing sent (tls)"].append(_run([*gapship, "push", str(bundle), ref, *reach["tls"][1],
                                                               *jobs, "--no-progress"]))
    _run([*gapship, "push", str(bundle), f"oci://{plain}/bench/model:1.0", *reach["plain"][1], *jobs, "--no-progress"])
    sources = {"directory": [str(bundle)],
               "oci:// plain HTTP": [f"oci://{plain}/bench/model:1.0", *reach["plain"][1], *jobs],
               "oci:// TLS": [f"oci://{tls}/bench/round0:1.0", *reach["tls"][1], *jobs]}
    seconds: dict[str, list[float]] = {name: [] for name in sources}
    registry_cpu: dict[str, list[float]] = {name: [] for name in pids}
    dropped = True
    for r in range(args.rounds):
        order = list(sources)[r % len(sources):] + list(sources)[:r % len(sources)]
        for name in order:
            say(f"oci: install round {r + 1}, {name} ...")
            prefix = root / "prefixes" / f"{r}-{name.split()[0].strip(':/')}-{len(seconds[name])}"
            dropped = _drop_caches() and dropped
            before = _cpu_seconds(pids[name]) if name in pids else 0.0
            seconds[name].append(_run([*gapship, "install", *sources[name][:1], "--trust", str(trust), "--prefix",
                                       str(prefix), *sources[name][1:], "--no-progress"]))
            if name in pids:
                registry_cpu[name].append(_cpu_seconds(pids[name]) - before)
            shutil.rmtree(prefix, ignore_errors=True)
    say("oci: four concurrent installs (tls) ...")
    concurrent: list[float] = []
    for r in range(args.rounds):
        dropped = _drop_caches() and dropped
        start = time.perf_counter()
        running = [subprocess.Popen([*gapship, "install", *sources["oci:// TLS"][:1], "--trust", str(trust),
                                     "--prefix", str(root / "concurrent" / f"{r}-{i}"), *sources["oci:// TLS"][1:],
                                     "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                   for i in range(4)]
        for p in running:
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"concurrent install failed: {err.decode()[-2000:]}")
        concurrent.append(time.perf_counter() - start)
        shutil.rmtree(root / "concurrent", ignore_errors=True)
    medians = {name: _median(xs) for name, xs in seconds.items()}
    mibs = {name: round(payload / MiB / m, 1) for name, m in medians.items()}
    ratios = {name: round(medians["directory"] / medians[name], 2) for name in sources if name != "directory"}
    wall = _median(concurrent)
    return {
        "settings": {"command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]), "payload_bytes": payload,
                     "chunk_size": args.chunk_size, "rounds": args.rounds, "jobs": args.oci_jobs,
                     "cores": os.cpu_count(), "page_cache_dropped": dropped},
        "push": {"median_s": {name: _median(xs) for name, xs in pushes.items()},
                 "MiB_per_s": round(payload / MiB / _median(pushes["push, every blob (tls)"]), 1)},
        "install": {"median_s": medians, "MiB_per_s": mibs, "ratio_vs_directory": ratios,
                    "registry_cpu_s": {name: _median(xs) for name, xs in registry_cpu.items()},
                    "target": "registry install >= 0.8x the directory install's throughput",
                    "met": {name: ratio >= 0.8 for name, ratio in ratios.items()}},
        "concurrent": {"installs": 4, "median_wall_s": wall, "aggregate_MiB_per_s": round(4 * payload / MiB / wall, 1),
                       "per_install_vs_single": round(medians["oci:// TLS"] / wall * 4, 2)},
    }


def render(report: dict[str, object]) -> str:
    d = report["oci"]
    assert isinstance(d, dict)
    if "skipped" in d:
        return f"## oci: left out: {d['skipped']}"
    s, p, i, c = d["settings"], d["push"], d["install"], d["concurrent"]
    lines = [f"## oci: install through a registry ({s['payload_bytes'] // MiB} MiB payload, {s['chunk_size'] // MiB} "
             f"MiB chunks, --jobs {s['jobs']}, {s['cores']} cores, page cache dropped: {s['page_cache_dropped']})",
             "", "| figure | value |", "|---|---|"]
    for name, value in p["median_s"].items():
        lines.append(f"| {name} | {value} s (median) |")
    for name, value in i["median_s"].items():
        ratio = i["ratio_vs_directory"].get(name)
        extra = f", {ratio}x the directory" if ratio is not None else ""
        lines.append(f"| install from {name} | {value} s (median), {i['MiB_per_s'][name]} MiB/s{extra} |")
    for name, value in i["registry_cpu_s"].items():
        lines.append(f"| CPU time of the registry process per install, {name} | {value} s (median) |")
    lines.append(f"| four concurrent installs (TLS) | {c['median_wall_s']} s wall (median), "
                 f"{c['aggregate_MiB_per_s']} MiB/s in all |")
    verdict = ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in i["met"].items())
    lines.append(f"\ntarget: registry install >= 0.8x the directory: {verdict}")
    return "\n".join(lines)
