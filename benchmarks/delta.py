#!/usr/bin/env python3
"""Delta bundles on the benchmark's large data set: ``benchmarks/run.py --only delta`` (docs/benchmarks.md).

An update that changes only the safeguards policy, built twice: as a full bundle and as a delta
(``build --base``). Measured in one run:

  crossing   bytes that cross the gap: chunks + manifest + signatures, full vs delta
  install    installing 2.0.0 where 1.0.0 is installed, median of N rounds: the full bundle vs the
             delta, both with GAPSHIP_SHARE=copy (every file an independent copy, on the work
             directory's filesystem: ext4 here), and the delta with the default (hard links on ext4)
  disk       what the prefix holds with both versions: copies vs shared (du counts a hard-linked
             inode once)
  reflink    the same installs on a loop-mounted btrfs, inside ``unshare --mount`` (root and
             mkfs.btrfs needed; otherwise the report says why it was left out); disk from statvfs

Public tools only: python, gapship, du, and for the reflink part mkfs.btrfs, unshare and mount.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from run import write_random  # benchmarks/run.py, beside this script (it imports this module lazily)

MiB = 1024**2
POLICY = 'schema_version = 1\nprohibited_uses = ["weapons targeting"]\n\n[sites.bench]\nsafeguards = ["audit-log"]\n\n' \
         '[models.large]\nsites = ["bench"]\n'


def _run(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmark command failed (exit {done.returncode}): {' '.join(argv)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def _sync() -> None:
    os.sync()


def _bundle_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


def _du(path: Path) -> int:
    """Bytes under ``path``, each hard-linked inode counted once (0 when it does not exist)."""
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def prepare(work: Path, gapship: list[str], *, size: int, files: int, chunk_size: int) -> dict[str, Path]:
    """The data, keys and three bundles: 1.0.0, and 2.0.0 (policy changed) full and as a delta."""
    data, bundles = work / "data", work / "bundles"
    for d in (data / "model", bundles, work / "keys", work / "trust"):
        d.mkdir(parents=True, exist_ok=True)
    each = size // files
    for i in range(files):
        write_random(data / "model" / f"shard-{i:02d}.bin", each)
    for version, policy in (("1.0.0", POLICY), ("2.0.0", POLICY + '\n[sites.bench2]\nsafeguards = ["audit-log"]\n')):
        (data / f"policy-{version}.toml").write_text(policy)
        (data / f"spec-{version}.toml").write_text(
            f'[bundle]\nname = "bench-delta"\nversion = "{version}"\n\n[[model]]\nname = "large"\nsource = "model"\n\n'
            f'[safeguards]\nsource = "policy-{version}.toml"\n')
    _run([*gapship, "keygen", "bench", "--out-dir", str(work / "keys")])
    shutil.copy(work / "keys" / "bench.pub", work / "trust" / "bench.pub")
    key = str(work / "keys" / "bench.key")
    out = {"v1": bundles / "v1", "full": bundles / "v2-full", "delta": bundles / "v2-delta"}
    common = ["--key", key, "--chunk-size", str(chunk_size), "--no-progress"]
    _run([*gapship, "build", str(data / "spec-1.0.0.toml"), "--out", str(out["v1"]), *common])
    _run([*gapship, "build", str(data / "spec-2.0.0.toml"), "--out", str(out["full"]), *common])
    _run([*gapship, "build", str(data / "spec-2.0.0.toml"), "--out", str(out["delta"]), *common,
          "--base", str(out["v1"])])
    return out


def crossing(bundles: dict[str, Path]) -> dict[str, object]:
    delta, full = bundles["delta"], bundles["full"]
    chunks = sum(p.stat().st_size for p in (delta / "chunks").iterdir())
    manifest = (delta / "manifest.json").stat().st_size
    return {"full_bytes": _bundle_bytes(full), "delta_bytes": _bundle_bytes(delta), "delta_chunk_bytes": chunks,
            "delta_manifest_bytes": manifest, "target": "delta chunks < 1 MiB", "met": chunks < MiB}


def installs(root: Path, gapship: list[str], bundles: dict[str, Path], trust: Path, *, rounds: int,
             disk: Callable[[Path], int]) -> dict[str, object]:
    """Median seconds to install 2.0.0 over an installed 1.0.0, per contender; disk of both versions."""
    contenders = {"full (copies)": ("full", "copy"), "delta (copies)": ("delta", "copy"),
                  "delta (default sharing)": ("delta", "")}
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    used: dict[str, int] = {}
    shared: dict[str, object] = {}
    for r in range(rounds):
        order = list(contenders)[r % len(contenders):] + list(contenders)[:r % len(contenders)]
        for name in order:
            which, mode = contenders[name]
            prefix = root / f"prefix-{r}-{which}-{mode or 'auto'}"
            env = {**os.environ, "GAPSHIP_SHARE": mode}
            _sync()
            baseline = disk(prefix)
            _run([*gapship, "install", str(bundles["v1"]), "--trust", str(trust), "--prefix", str(prefix),
                  "--no-progress"], env=env)
            _sync()
            used["1.0.0 alone"] = disk(prefix) - baseline
            start = time.perf_counter()
            done = subprocess.run([*gapship, "install", str(bundles[which]), "--trust", str(trust), "--prefix",
                                   str(prefix), "--no-progress", "--json"], capture_output=True, text=True, env=env)
            seconds[name].append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"install failed: {done.stdout[-2000:]}")
            shared[name] = json.loads(done.stdout)["shared"]
            _sync()
            used[f"1.0.0 and 2.0.0, {name}"] = disk(prefix) - baseline
            shutil.rmtree(prefix)
            _sync()
    medians = {name: round(statistics.median(s), 3) for name, s in seconds.items()}
    return {"median_s": medians, "seconds": seconds, "shared": shared, "disk_bytes": used,
            "delta_vs_full": round(medians["delta (copies)"] / medians["full (copies)"], 3),
            "target": "delta install (copies) no slower than the full install",
            "met": medians["delta (copies)"] <= medians["full (copies)"] * 1.05}


def _statvfs_used(path: Path) -> int:
    st = os.statvfs(path if path.exists() else path.parent)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def reflink_part(work: Path, gapship: list[str], bundles: dict[str, Path], *, size: int, rounds: int) -> dict[str, object]:
    if shutil.which("mkfs.btrfs") is None:
        return {"skipped": "mkfs.btrfs is not installed (apt-get install btrfs-progs)"}
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return {"skipped": "a loop mount needs root and unshare(1)"}
    image, mnt = work / "btrfs.img", work / "mnt"
    with image.open("wb") as f:
        f.truncate(max(3 * size + 512 * MiB, 1024 * MiB))
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    mnt.mkdir(exist_ok=True)
    args = [sys.executable, str(Path(__file__).resolve()), "--inner", str(mnt), "--rounds", str(rounds),
            "--gapship", json.dumps(gapship), "--bundles", json.dumps({k: str(v) for k, v in bundles.items()}),
            "--trust", str(work / "trust")]
    inner = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
    done = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -o loop '{image}' '{mnt}' && chmod 755 '{mnt}' "
                           f"&& {inner}"], capture_output=True, text=True)
    image.unlink()
    if done.returncode != 0:
        return {"skipped": f"the loop-mounted btrfs failed: {done.stderr.strip()[-300:]}"}
    result: dict[str, object] = json.loads(done.stdout)
    return result


def benchmark_delta(args: argparse.Namespace, work: Path, gapship: list[str],
                    say: Callable[[str], None]) -> dict[str, object]:
    root = work / "delta"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    say(f"delta: building 1.0.0 and 2.0.0 (full and delta) of {args.size // MiB} MiB in {root} ...")
    bundles = prepare(root, gapship, size=args.size, files=args.files, chunk_size=args.chunk_size)
    say("delta: installing (ext4, copies and default sharing) ...")
    ext4 = installs(root, gapship, bundles, root / "trust", rounds=args.rounds, disk=_du)
    say("delta: installing on a loop-mounted btrfs (reflinks) ...")
    reflink = reflink_part(root, gapship, bundles, size=args.size, rounds=args.rounds)
    return {"delta": {"settings": {"command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
                                   "large_bytes": args.size, "files": args.files, "chunk_size": args.chunk_size,
                                   "rounds": args.rounds, "filesystem": _fs_type(root)},
                      "crossing": crossing(bundles), "install": ext4, "reflink": reflink}}


def _fs_type(path: Path) -> str:
    done = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def render(report: dict[str, object]) -> str:
    d = report["delta"]
    assert isinstance(d, dict)
    c, i, r = d["crossing"], d["install"], d["reflink"]
    lines = [f"## delta: a policy-only update ({d['settings']['large_bytes'] // MiB} MiB, {d['settings']['filesystem']})",
             "", "| figure | value |", "|---|---|",
             f"| bytes crossing, full bundle | {c['full_bytes']:,} |",
             f"| bytes crossing, delta | {c['delta_bytes']:,} (chunks {c['delta_chunk_bytes']:,}, "
             f"manifest {c['delta_manifest_bytes']:,}) |"]
    for name, value in i["median_s"].items():
        lines.append(f"| install 2.0.0 over 1.0.0, {name} | {value} s (median) |")
    for name, value in i["disk_bytes"].items():
        lines.append(f"| disk, {name} | {value:,} B |")
    if "skipped" in r:
        lines.append(f"| reflink (btrfs) | left out: {r['skipped']} |")
    else:
        for name, value in r["median_s"].items():
            lines.append(f"| btrfs: install, {name} | {value} s (median) |")
        for name, value in r["disk_bytes"].items():
            lines.append(f"| btrfs: disk, {name} | {value:,} B |")
    lines.append(f"\ntargets: delta chunks < 1 MiB: {'met' if c['met'] else 'MISSED'}; "
                 f"delta install (copies) <= full: {'met' if i['met'] else 'MISSED'} (ratio {i['delta_vs_full']})")
    return "\n".join(lines)


def _inner(argv: Sequence[str]) -> int:
    """Inside the private mount namespace, on the btrfs: the same installs, disk from statvfs."""
    p = argparse.ArgumentParser()
    p.add_argument("--inner", type=Path, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--gapship", required=True)
    p.add_argument("--bundles", required=True)
    p.add_argument("--trust", type=Path, required=True)
    a = p.parse_args(argv)
    bundles = {k: Path(v) for k, v in json.loads(a.bundles).items()}
    result = installs(a.inner, json.loads(a.gapship), bundles, a.trust, rounds=a.rounds, disk=_statvfs_used)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_inner(sys.argv[1:]))
