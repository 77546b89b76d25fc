#!/usr/bin/env python3
"""Throughput of gapship against the tools a site would otherwise use (docs/benchmarks.md).

One run generates its own payload (a few large incompressible files, and separately a tree of
small files), then times, on the same bytes and the same filesystem, over several rounds:

  build    gapship build                 vs  tar -c | sha256sum   (and tar -c | openssl dgst)
  verify   gapship verify                vs  sha256sum -c, openssl dgst, and N parallel openssl
                                             processes over disjoint chunks (N = cores): the
                                             machine's parallel SHA-256 limit
  install  gapship install (durable)     vs  tar -x alone, tar -x + sync, and the three-pass
                                             pipeline sha256sum -c parts; cat parts | tar -x;
                                             sha256sum -c files

and reports medians, throughput, ratios (speed-up of gapship = baseline time / gapship time) and
the peak RSS of every command's process tree (GNU time's %M, or wait4's rusage without it), as a
markdown table or, with --json, one JSON object.

Page cache, the same for every contender: before each timed run the script syncs, then either
reads all of that step's inputs once (--cache warm, the default: every contender starts with its
inputs in memory) or evicts them with posix_fadvise(DONTNEED) (--cache cold: every contender reads
from the device). After each run it removes what the contender wrote and syncs again, untimed, so
one contender's dirty pages are never flushed on the next one's clock. The order of contenders
rotates from round to round so that slow drift of the machine is shared.

The small-file trees are moved aside after each run and deleted only at the end of their step:
ext4 avoids reusing an inode deleted less than a minute or so ago (fs/ext4/ialloc.c,
recently_deleted), and creating 20,000 files right after deleting 20,000 costs several times more
kernel CPU than on a filesystem that is not churning (measured here: 40 us against 300+ us per
file). That is an artefact of benchmarking, not of installing, and it would hit whichever contender
ran second.

Before every timed run, of every contender, the script also drops the kernel's page cache where it
may (root: echo 3 > /proc/sys/vm/drop_caches), then reads the inputs once: on these VMs guest memory
not touched before is slow to fault in, and a run after a cache full of stale pages paid for it.
Dropping the cache evicts the programs too, and gapship is a few hundred Python files to read back
(its start-up took 0.21 to 0.50 s cold against 0.12 s warm, by how busy the disk was), while tar is
one: so every program of every contender (tar, cat, dd, sync, sha256sum, openssl, pip, venv, uv, and gapship's
build, verify and install commands, through --version or --help) is then loaded once, untimed,
the same for all, as on a host where the admin has run the tool before.

--only deps times the dependency step (benchmarks/deps.py): a real serving stack's wheels, downloaded
once from the package index into a cache folder, into a fresh venv by gapship install, by
python -m venv && pip install --no-index, and by uv pip install --offline (when uv is there).

Public tools only: python, bash, tar, sha256sum, openssl, pip, uv and GNU time when they are there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024**2
UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": MiB, "mib": MiB, "mb": 1000**2,
         "g": 1024**3, "gib": 1024**3, "gb": 1000**3}
POLICY = """schema_version = 1
prohibited_uses = ["weapons targeting"]

[sites.bench]
safeguards = ["audit-log"]

[models.{model}]
sites = ["bench"]
"""
TARGETS_NOTE = "targets from issues 6 and 16 (2-core machine)"
LIMIT_SHARE = "large install as a share of the durable write limit (1 = as fast as the disk allows)"
LIMIT_VS_TAR = "durable write limit vs tar -x alone (the most any install that flushes can reach)"
STARTUP = "start-up of the command (gapship install --help)"
STARTUP_SHARE = ("small-file install: start-up plus the flush (tar -x; sync minus tar -x) as a share of the "
                 "0.8x tar -x target's time (1 = nothing left for the files)")


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", text, re.IGNORECASE)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 2GiB or 512MiB")
    return int(match.group(1)) * UNITS[match.group(2).lower()]


# -- running one command, with its wall time and the peak RSS of its process tree ---------------


@dataclass(frozen=True)
class Sample:
    seconds: float
    cpu_seconds: float
    peak_rss_kib: int


def run_timed(argv: Sequence[str], *, log: Path) -> Sample:
    """Run ``argv`` to completion; wall time, and user+sys CPU and peak RSS of its process tree.

    CPU and RSS come from wait4(2). A child forked from this Python process starts its peak-RSS
    count at this process's size, so when /usr/bin/time exists (GNU time: a small C program) it runs
    the command and reports the tree's true peak (%M), at the cost of one extra fork+exec."""
    rss_file = log.with_suffix(".rss")
    wrapper = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] if os.access("/usr/bin/time", os.X_OK) else []
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([*wrapper, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"benchmark command failed with exit {proc.returncode}: {' '.join(argv)}\n{tail}")
    peak = int(rss_file.read_text().split()[-1]) if wrapper else usage.ru_maxrss
    return Sample(elapsed, usage.ru_utime + usage.ru_stime, peak)


def shell(script: str) -> list[str]:
    return ["bash", "-c", f"set -euo pipefail; {script}"]


def q(path: Path | str) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


# -- the payload -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    name: str  # "large" or "small"
    root: Path  # holds model/, policy.toml, spec.toml
    files: tuple[Path, ...]
    data_bytes: int

    @property
    def spec(self) -> Path:
        return self.root / "spec.toml"


def write_random(path: Path, size: int, block: int = 4 * MiB) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n


def make_dataset(root: Path, name: str, sizes: Sequence[tuple[str, int]]) -> Dataset:
    model = root / "model"
    files = []
    for rel, size in sizes:
        path = model / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_random(path, size)
        files.append(path)
    (root / "policy.toml").write_text(POLICY.format(model=name))
    (root / "spec.toml").write_text(
        f'[bundle]\nname = "bench-{name}"\nversion = "1.0.0"\n\n'
        f'[[model]]\nname = "{name}"\nsource = "model"\n\n[safeguards]\nsource = "policy.toml"\n'
    )
    files.append(root / "policy.toml")
    return Dataset(name, root, tuple(files), sum(p.stat().st_size for p in files))


def large_sizes(total: int, count: int) -> list[tuple[str, int]]:
    base = total // count
    return [(f"shard-{i:02d}.bin", base + (total - base * count if i == count - 1 else 0)) for i in range(count)]


def small_sizes(count: int, seed: int = 6) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    per_dir = 200
    return [(f"d{i // per_dir:03d}/f{i:05d}.bin", rng.randint(512, 16 * 1024)) for i in range(count)]


# -- page cache --------------------------------------------------------------------------------


def sync() -> None:
    os.sync()


def drop_caches() -> bool:
    """Empty the page cache (needs root; a no-op otherwise): every contender starts from the same state."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm(paths: Sequence[Path]) -> None:
    """Read every input once so that it sits in the page cache."""
    buf = bytearray(4 * MiB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def evict(paths: Sequence[Path]) -> None:
    """Drop (clean) inputs from the page cache without root: posix_fadvise(DONTNEED)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# -- contenders --------------------------------------------------------------------------------


@dataclass
class Contender:
    step: str  # build | verify | install
    name: str
    argv: list[str]
    inputs: Sequence[Path]
    outputs: Sequence[Path] = ()  # removed after every run
    many_files: bool = False  # move outputs aside and delete them at the end of the step (module doc)
    prepare: Callable[[], None] = lambda: None
    gapship: bool = False
    samples: list[Sample] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    def peak_rss_mib(self) -> float:
        return max(s.peak_rss_kib for s in self.samples) / 1024


@dataclass(frozen=True)
class Env:
    work: Path
    gapship: list[str]
    key: Path
    trust: Path
    chunk_size: int
    cores: int


def bundle_paths(bundle: Path) -> list[Path]:
    chunks = sorted((bundle / "chunks").iterdir())
    return [bundle / "manifest.json", *sorted((bundle / "signatures").iterdir()), *chunks]


def chunk_files(bundle: Path) -> list[Path]:
    return sorted((bundle / "chunks").iterdir())


def balanced_groups(paths: Sequence[Path], n: int) -> list[list[Path]]:
    """Split ``paths`` into at most ``n`` groups of about equal bytes (largest first, greedy)."""
    groups: list[tuple[int, list[Path]]] = [(0, []) for _ in range(n)]
    for p in sorted(paths, key=lambda p: -p.stat().st_size):
        groups.sort(key=lambda g: g[0])
        size, members = groups[0]
        groups[0] = (size + p.stat().st_size, members + [p])
    return [sorted(m) for _, m in groups if m]


def write_checksum_lists(bundle: Path) -> tuple[Path, Path]:
    """parts.sha256 (chunks) and files.sha256 (installed files, relative to the tar root) for the
    three-pass pipeline, taken from the manifest (not timed: a site receives them with the parts)."""
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    parts = bundle.parent / f"{bundle.name}.parts.sha256"
    files = bundle.parent / f"{bundle.name}.files.sha256"
    parts.write_text("".join(f"{c['hash']}  {bundle / 'chunks' / c['name']}\n" for c in manifest["chunks"]))
    files.write_text("".join(f"{f['hash']}  {f['path']}\n" for comp in manifest["components"] for f in comp["files"]))
    return parts, files


def build_contenders(env: Env, ds: Dataset) -> list[Contender]:
    out = env.work / "out" / f"build-{ds.name}"
    tar_c = f"tar --format=pax -cf - -C {q(ds.root)} model policy.toml"
    return [
        Contender("build", "gapship build", [*env.gapship, "build", str(ds.spec), "--out", str(out), "--key",
                  str(env.key), "--chunk-size", str(env.chunk_size), "--no-progress"],
                  ds.files, outputs=[out], gapship=True),
        Contender("build", "tar -c | sha256sum", shell(f"{tar_c} | sha256sum >/dev/null"), ds.files),
        Contender("build", "tar -c | openssl dgst -sha256", shell(f"{tar_c} | openssl dgst -sha256 >/dev/null"), ds.files),
    ]


def verify_contenders(env: Env, bundle: Path, parts: Path) -> list[Contender]:
    chunks = chunk_files(bundle)
    inputs = bundle_paths(bundle)
    names = " ".join(q(c) for c in chunks)
    parallel = " ".join(f"openssl dgst -sha256 {' '.join(q(c) for c in g)} >/dev/null &"
                        for g in balanced_groups(chunks, env.cores))
    return [
        Contender("verify", "gapship verify", [*env.gapship, "verify", str(bundle), "--trust", str(env.trust),
                  "--no-progress"], inputs, gapship=True),
        Contender("verify", "sha256sum -c", shell(f"sha256sum --quiet -c {q(parts)}"), inputs),
        Contender("verify", "openssl dgst -sha256", shell(f"openssl dgst -sha256 {names} >/dev/null"), inputs),
        Contender("verify", f"parallel SHA-256 limit ({env.cores}x openssl)", shell(f"{parallel} wait"), inputs),
    ]


# Writers for the durable write limit: the disk here wrote about twice as fast with four direct
# writers as with one (a virtio disk answers several requests at once); more did not help.
DISK_WRITERS = 4


def direct_io_works(directory: Path) -> bool:
    """Whether files under ``directory`` can be opened with O_DIRECT (tmpfs and some others refuse)."""
    probe = directory / ".direct-io-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0), 0o600)
        os.close(fd)
        return hasattr(os, "O_DIRECT")
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def disk_limit(env: Env, bundle: Path, dest: Path) -> tuple[str, list[str]]:
    """The durable write limit: the chunks copied to ``dest`` by DISK_WRITERS parallel dd processes,
    each file flushed before dd exits (conv=fsync), bypassing the page cache where the filesystem
    allows (oflag=direct). No verification, no tar: the fastest this disk takes the payload's bytes
    durably, which bounds any install that flushes before it switches (gapship does; format.md 7.3)."""
    direct = direct_io_works(env.work / "out")
    flags = "oflag=direct conv=fsync" if direct else "conv=fsync"
    # DISK_WRITERS at a time, in the chunks' order
    jobs = [f"dd if={q(c)} of={q(dest / c.name)} bs=8M {flags} status=none" for c in chunk_files(bundle)]
    script = "; ".join(" & ".join(jobs[i:i + DISK_WRITERS]) + " & wait" for i in range(0, len(jobs), DISK_WRITERS))
    name = f"durable write limit ({DISK_WRITERS}x dd {'oflag=direct ' if direct else ''}conv=fsync)"
    return name, shell(script)


def install_contenders(env: Env, ds: Dataset, bundle: Path, parts: Path, files: Path) -> list[Contender]:
    prefix = env.work / "out" / f"prefix-{ds.name}"
    dest = env.work / "out" / f"tar-{ds.name}"
    inputs = bundle_paths(bundle)
    cat = f"cat {' '.join(q(c) for c in chunk_files(bundle))}"
    untar = f"{cat} | tar -xf - -C {q(dest)}"
    mkdest: Callable[[], None] = lambda: dest.mkdir(parents=True)
    limit: list[Contender] = []
    if ds.name == "large":
        name, argv = disk_limit(env, bundle, dest)
        limit.append(Contender("install", name, argv, inputs, outputs=[dest], prepare=mkdest))
    else:  # what every gapship install pays before its first file: the interpreter and the command's imports
        limit.append(Contender("install", STARTUP, [*env.gapship, "install", "--help"], inputs))
    return [
        Contender("install", "gapship install", [*env.gapship, "install", str(bundle), "--trust", str(env.trust),
                  "--prefix", str(prefix), "--no-progress"], inputs, outputs=[prefix], gapship=True),
        Contender("install", "tar -x", shell(untar), inputs, outputs=[dest], prepare=mkdest),
        Contender("install", "tar -x; sync", shell(f"{untar}; sync"), inputs, outputs=[dest], prepare=mkdest),
        Contender("install", "three-pass (sha256sum -c; tar -x; sha256sum -c)",
                  shell(f"sha256sum --quiet -c {q(parts)}; {untar}; cd {q(dest)}; sha256sum --quiet -c {q(files)}"),
                  inputs, outputs=[dest], prepare=mkdest),
        *limit,
    ]


# -- one step, several rounds -----------------------------------------------------------------


def programs(gapship: Sequence[str]) -> list[list[str]]:
    """A cheap run of every program a contender uses, to load it after the page cache was dropped
    (module doc): the same for every contender."""
    tools = [["tar", "--version"], ["cat", "--version"], ["dd", "--version"], ["sync", "--version"],
             ["sha256sum", "--version"], ["openssl", "version"]]
    found = [t for t in tools if shutil.which(t[0])]
    found += [[sys.executable, "-m", "pip", "--version"], [sys.executable, "-m", "venv", "--help"]]  # the deps case
    uv = bench_module("deps").find_uv()
    if uv:
        found.append([uv, "--version"])
    return found + [[*gapship, step, "--help"] for step in ("build", "verify", "install")]


def load_programs(commands: Sequence[Sequence[str]]) -> None:
    for argv in commands:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def run_step(contenders: list[Contender], *, rounds: int, cache: str, work: Path, say: Callable[[str], None],
             load: Sequence[Sequence[str]] = ()) -> None:
    trash = work / "trash"
    for r in range(rounds):
        shift = r % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            c.prepare()
            sync()
            drop_caches()
            load_programs(load)
            warm(c.inputs) if cache == "warm" else evict(c.inputs)
            sample = run_timed(c.argv, log=work / "logs" / "last.log")
            c.samples.append(sample)
            say(f"  round {r + 1}/{rounds}  {c.step:<7} {c.name:<48} {sample.seconds:8.3f} s")
            for o in c.outputs:
                if c.many_files:
                    trash.mkdir(exist_ok=True)
                    o.rename(trash / f"{len(list(trash.iterdir()))}")
                else:
                    remove(o)
            sync()
    remove(trash)
    sync()


# -- report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    text: str
    value: float
    goal: float
    higher_is_better: bool = True

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal


def results(steps: dict[str, list[Contender]], sizes: dict[str, int]) -> list[dict[str, object]]:
    rows = []
    for key, contenders in steps.items():
        dataset, step = key.split("/")
        ours = next(c for c in contenders if c.gapship)
        for c in contenders:
            rows.append({
                "dataset": dataset, "step": step, "contender": c.name, "gapship": c.gapship,
                "median_s": round(c.median(), 4), "seconds": [round(s.seconds, 4) for s in c.samples],
                "cpu_s": round(statistics.median(s.cpu_seconds for s in c.samples), 3),
                "mb_per_s": round(sizes[dataset] / c.median() / 1e6, 1),
                "peak_rss_mib": round(c.peak_rss_mib(), 1),
                "gapship_speedup": round(c.median() / ours.median(), 3),
            })
    return rows


def targets(rows: list[dict[str, object]]) -> list[Target]:
    """The issue's targets that this run can judge (all of them when both data sets ran)."""
    def t(dataset: str, step: str, name: str) -> float | None:
        found = [float(r["median_s"]) for r in rows if r["dataset"] == dataset and r["step"] == step  # type: ignore[arg-type]
                 and str(r["contender"]).startswith(name)]
        return found[0] if found else None

    wanted = [
        ("install (large) vs durable write limit, >= 0.85 of it", ("large", "install", "durable write limit"), 0.85),
        ("install (large) vs tar -x, speed-up >= 1.5", ("large", "install", "tar -x"), 1.5),
        ("install (large) vs three-pass, speed-up >= 4", ("large", "install", "three-pass"), 4.0),
        ("verify (large) vs one openssl dgst, speed-up >= 1.7", ("large", "verify", "openssl"), 1.7),
        ("verify (large) vs parallel SHA-256 limit, >= 0.85 of it", ("large", "verify", "parallel"), 0.85),
        ("build (large) vs tar -c | sha256sum, speed-up >= 1", ("large", "build", "tar -c | sha256sum"), 1.0),
        ("build (large) vs tar -c | openssl dgst, >= 0.6 of it", ("large", "build", "tar -c | openssl"), 0.6),
        ("install (small files) vs tar -x; sync, speed-up >= 1", ("small", "install", "tar -x; sync"), 1.0),
        ("install (small files) vs tar -x, >= 0.8 of it", ("small", "install", "tar -x"), 0.8),
    ]
    out = []
    for text, (dataset, step, name), goal in wanted:
        theirs, ours = t(dataset, step, name), t(dataset, step, "gapship")
        if theirs is not None and ours is not None:
            out.append(Target(text, theirs / ours, goal))
    out += bench_module("deps").targets(rows, Target)
    rss = [float(r["peak_rss_mib"]) for r in rows if r["gapship"]]  # type: ignore[arg-type]
    out.append(Target("peak RSS of any gapship command, MiB < 200", max(rss), 200.0, higher_is_better=False))
    return out


def bounds(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """What the disk allows, next to the install target it bounds (not a target: a measurement of
    the machine, like the parallel SHA-256 limit). A durable install cannot beat the durable write
    limit, so when ``tar -x`` alone (page cache only) is faster than limit / 1.5, the 1.5x target
    cannot be met on this machine by any install that flushes before it switches. For small files:
    what an install pays whatever it does with the files (the command's start-up, and the flush,
    measured as what ``sync`` adds to ``tar -x``), against the time the 0.8x-``tar -x`` target allows."""
    def median(name: str) -> float | None:
        found = [float(r["median_s"]) for r in rows if r["dataset"] == "large" and r["step"] == "install"  # type: ignore[arg-type]
                 and str(r["contender"]).startswith(name)]
        return found[0] if found else None

    out: list[dict[str, object]] = []
    limit, tar, ours = median("durable write limit"), median("tar -x"), median("gapship")
    if limit is not None and tar is not None and ours is not None:
        out += [{"figure": LIMIT_SHARE, "value": round(limit / ours, 3)},
                {"figure": LIMIT_VS_TAR, "value": round(tar / limit, 3)}]
    small = {str(r["contender"]): float(r["median_s"]) for r in rows  # type: ignore[arg-type]
             if r["dataset"] == "small" and r["step"] == "install"}
    if {STARTUP, "tar -x", "tar -x; sync"} <= small.keys():
        fixed = small[STARTUP] + max(0.0, small["tar -x; sync"] - small["tar -x"])
        out.append({"figure": STARTUP_SHARE, "value": round(fixed / (small["tar -x"] / 0.8), 3)})
    return out


def machine(work: Path) -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "memory_gib": memory_gib(), "filesystem": filesystem(work),
            "python": platform.python_version(), "kernel": platform.release(), "tools": tool_versions()}


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def filesystem(path: Path) -> str:
    """The mount (type, device) holding ``path``, from /proc/mounts: longest matching mount point."""
    best = ("", "?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, point, kind = line.split()[:3]
            point = point.replace("\\040", " ")
            if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best[0]):
                best = (point, kind, dev)
    except OSError:
        return "?"
    return f"{best[1]} ({best[2]} on {best[0]})"


def tool_versions() -> dict[str, str]:
    out = {}
    for name, argv in (("tar", ["tar", "--version"]), ("sha256sum", ["sha256sum", "--version"]),
                       ("openssl", ["openssl", "version"])):
        try:
            out[name] = subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()[0]
        except (OSError, IndexError):
            out[name] = "?"
    return out


def render(report: dict[str, object]) -> str:
    rows: list[dict[str, object]] = report["results"]  # type: ignore[assignment]
    m: dict[str, object] = report["machine"]  # type: ignore[assignment]
    s: dict[str, object] = report["settings"]  # type: ignore[assignment]
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu']}, {m['memory_gib']} GiB RAM, {m['filesystem']}, "
        f"Python {m['python']}, Linux {m['kernel']}",
        f"payload: {payload_line(s)}; chunk size {s['chunk_size'] // MiB} MiB; {s['rounds']} round(s), median shown",  # type: ignore[operator]
        f"page cache: {s['cache_note']}",
        "",
        "| data | step | contender | median s | MB/s | CPU s | peak RSS MiB | gapship speed-up |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cell = str(r["contender"]).replace("|", "\\|")  # a pipe inside a cell would end it
        name = f"**{cell}**" if r["gapship"] else cell
        speed = "" if r["gapship"] else f"{r['gapship_speedup']:.2f}x"
        lines.append(f"| {r['dataset']} | {r['step']} | {name} | {r['median_s']:.3f} | {r['mb_per_s']:.0f} | "
                     f"{r['cpu_s']:.2f} | {r['peak_rss_mib']:.0f} | {speed} |")
    lines += ["", f"{TARGETS_NOTE}:"]
    for t in report["targets"]:  # type: ignore[attr-defined]
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']:.2f}")
    for b in report.get("bounds", []):  # type: ignore[attr-defined]
        lines.append(f"  [bound] {b['figure']}: {b['value']:.2f}")
    return "\n".join(lines)


def payload_line(s: dict[str, object]) -> str:
    parts = []
    if s["large_bytes"]:
        parts.append(f"large = {s['large_files']} files, {s['large_bytes'] / MiB:.0f} MiB")  # type: ignore[operator]
    if s["small_bytes"]:
        parts.append(f"small = {s['small_files']} files, {s['small_bytes'] / MiB:.0f} MiB")  # type: ignore[operator]
    if s.get("deps_wheels"):
        parts.append(f"deps = {s['deps_wheels']}")
    return "; ".join(parts)


# -- main ---------------------------------------------------------------------------------------


def find_gapship(given: str | None) -> list[str]:
    if given:
        return given.split()
    beside = Path(sys.executable).parent / "gapship"
    found = str(beside) if beside.exists() else shutil.which("gapship")
    if not found:
        raise SystemExit("gapship is not installed: pip install . (or pass --gapship COMMAND)")
    return [found]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=parse_size("2GiB"), help="total size of the large files (default 2GiB)")
    p.add_argument("--files", type=int, default=4, help="number of large files (default 4)")
    p.add_argument("--small-files", type=int, default=20_000, help="number of small files, 512 B..16 KiB (default 20000)")
    p.add_argument("--chunk-size", type=parse_size, default=parse_size("64MiB"), help="bundle chunk size (default 64MiB)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per contender (default 3)")
    p.add_argument("--cache", choices=("warm", "cold"), default="warm", help="inputs in page cache or evicted (default warm)")
    p.add_argument("--workdir", type=Path, help="where to generate and write everything (default: a new temp dir "
                   "under the current directory, so all contenders use one filesystem); removed afterwards unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--gapship", help="command to run gapship (default: the gapship script beside this python)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run for CI: 8 MiB, 200 small files, 1 round")
    p.add_argument("--only", choices=("large", "small", "parity", "delta", "deps", "oci", "audit"),
                   help="run one of the data sets (targets need large and small), or the parity case "
                        "(benchmarks/parity.py), the delta update case (benchmarks/delta.py), the dependency step "
                        "(benchmarks/deps.py), installs through an OCI registry (benchmarks/oci.py) or the "
                        "transparency log (benchmarks/audit.py)")
    p.add_argument("--oci-jobs", type=int, default=4, help="--jobs of the registry transfers in --only oci (default 4)")
    p.add_argument("--deps-cache", type=Path, help="where the real wheel set for --only deps is downloaded once "
                   "(default ~/.cache/gapship-bench/wheels-pyX.Y)")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.small_files, args.chunk_size, args.rounds = 8 * MiB, 200, 1 * MiB, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)
    own = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix=".gapship-bench-", dir=Path.cwd())) if own else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.only == "parity":
            import parity  # benchmarks/parity.py, beside this script

            report = parity.benchmark(args, work, say, gapship=find_gapship(args.gapship), run_timed=run_timed,
                                      make_dataset=make_dataset, large_sizes=large_sizes, sync=sync, warm=warm)
        elif args.only == "delta":
            import delta  # benchmarks/delta.py, beside this script
            report = delta.benchmark_delta(args, work, find_gapship(args.gapship), say)
        elif args.only == "oci":
            import oci  # benchmarks/oci.py, beside this script
            report = oci.benchmark_oci(args, work, find_gapship(args.gapship), say)
        elif args.only == "audit":
            import audit  # benchmarks/audit.py, beside this script
            report = audit.benchmark_audit(args, work, find_gapship(args.gapship), say)
        else:
            report = benchmark(args, work, say)
    finally:
        if own and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    renderers = {"parity": lambda r: parity.render(r), "delta": lambda r: delta.render(r),
                 "oci": lambda r: oci.render(r), "audit": lambda r: audit.render(r)}
    print(json.dumps(report, indent=2) if args.json else renderers.get(args.only or "", render)(report))
    return 0


def benchmark(args: argparse.Namespace, work: Path, say: Callable[[str], None]) -> dict[str, object]:
    gapship = find_gapship(args.gapship)
    for sub in ("keys", "trust", "data", "bundles", "out", "logs", "trash"):
        remove(work / sub)
        (work / sub).mkdir()
    say(f"generating payload in {work} ...")
    run_timed([*gapship, "keygen", "bench", "--out-dir", str(work / "keys")], log=work / "logs" / "keygen.log")
    shutil.copy(work / "keys" / "bench.pub", work / "trust" / "bench.pub")
    env = Env(work, gapship, work / "keys" / "bench.key", work / "trust", args.chunk_size, os.cpu_count() or 1)
    datasets = {}
    if args.only in (None, "large"):
        datasets["large"] = make_dataset(work / "data" / "large", "large", large_sizes(args.size, args.files))
    if args.only in (None, "small"):
        datasets["small"] = make_dataset(work / "data" / "small", "small", small_sizes(args.small_files))
    steps: dict[str, list[Contender]] = {}
    sizes = {name: ds.data_bytes for name, ds in datasets.items()}
    deps_wheels = ""
    if args.only in (None, "deps"):
        deps_wheels = deps_step(args, env, steps, sizes, say)
    for name, ds in datasets.items():
        bundle = work / "bundles" / name
        run_timed([*gapship, "build", str(ds.spec), "--out", str(bundle), "--key", str(env.key), "--chunk-size",
                   str(args.chunk_size), "--no-progress"], log=work / "logs" / "build.log")
        parts, files = write_checksum_lists(bundle)
        sync()
        steps[f"{name}/build"] = build_contenders(env, ds)
        steps[f"{name}/verify"] = verify_contenders(env, bundle, parts)
        steps[f"{name}/install"] = install_contenders(env, ds, bundle, parts, files)
        if name == "small":
            for c in steps[f"{name}/install"]:
                c.many_files = True
    for key, contenders in steps.items():
        say(f"{key}:")
        run_step(contenders, rounds=args.rounds, cache=args.cache, work=work, say=say, load=programs(env.gapship))
    rows = results(steps, sizes)
    dropped = "page cache dropped (drop_caches), then " if drop_caches() else ""
    cache_note = (f"{dropped}every contender's programs loaded once (--version, --help) and its inputs read once before "
                  "each timed run (all contenders start warm)" if args.cache == "warm" else
                  "inputs evicted with posix_fadvise(DONTNEED) before each timed run (all contenders start cold)")
    return {
        "machine": machine(work),
        "settings": {
            "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
            "large_files": args.files, "large_bytes": sizes.get("large", 0), "small_files": args.small_files,
            "small_bytes": sizes.get("small", 0), "deps_wheels": deps_wheels, "chunk_size": args.chunk_size, "rounds": args.rounds, "cache": args.cache,
            "cache_note": cache_note + "; output deleted and synced after each run, untimed; "
                          "gapship install includes its syncfs, tar -x does not (see 'tar -x; sync')",
        },
        "results": rows,
        "targets": [{"target": t.text, "value": round(t.value, 3), "goal": t.goal, "met": t.met} for t in targets(rows)],
        "bounds": bounds(rows),
    }


def bench_module(name: str) -> Any:
    """A case module beside this script (benchmarks/<name>.py), loaded by path."""
    import importlib.util

    if f"gapship_bench_{name}" in sys.modules:
        return sys.modules[f"gapship_bench_{name}"]
    spec = importlib.util.spec_from_file_location(f"gapship_bench_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def deps_step(args: argparse.Namespace, env: Env, steps: dict[str, list[Contender]], sizes: dict[str, int],
              say: Callable[[str], None]) -> str:
    """--only deps (benchmarks/deps.py): build the bundle of the wheel set once, add its contenders."""
    deps = bench_module("deps")
    if args.smoke:
        wheels, what = deps.fake_wheels(env.work / "data" / "deps-wheels")
    else:
        wheels, what = deps.real_wheels(args.deps_cache or deps.default_cache(), say)
    spec = deps.write_spec(env.work / "data" / "deps", wheels)
    bundle = env.work / "bundles" / "deps"
    run_timed([*env.gapship, "build", str(spec), "--out", str(bundle), "--key", str(env.key), "--chunk-size",
               str(env.chunk_size), "--offline", "--no-progress"], log=env.work / "logs" / "build-deps.log")
    steps["deps/install"] = deps.contenders(env, bundle, make=Contender, shell=shell, q=q, bundle_paths=bundle_paths)
    sizes["deps"] = deps.total_bytes(bundle)
    return str(what)


if __name__ == "__main__":
    sys.exit(main())
