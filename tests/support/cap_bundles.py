"""Bundles at the format's caps (docs/format.md, "Limits"), for the peak-memory tests, and the one way
those tests measure: the peak RSS of a real ``gapship`` process.

The manifests are valid and signed: every chunk file holds the bytes its hash names (all chunks but
the last are hard links to one file, so 100,000 chunks cost a few blocks of disk), and every file entry
is laid out by the rules of section 5.2, so ``verify`` reads the whole manifest, builds the whole model
and hashes every chunk. The file hashes are not those of any bytes: only ``install`` would see that.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from gapship.installer.crypto.keys import signature_file_name
from gapship.installer.formats.manifest import (
    BLOCK, END_OF_ARCHIVE, FORMAT_NAME, MAX_CHUNKS, MAX_FILES, MAX_MANIFEST_BYTES, POLICY_PATH, RECORD, chunk_name,
)
from gapship.installer.kit import canonical_json
from gapship_testing import KeyPair, gapship_script

MiB = 1024 * 1024
CEILING = 200 * 1000 * 1000  # the bound: peak RSS under 200 MB at every cap
LINKS_PER_INODE = 60_000  # ext4 allows 65,000 links to one inode


def _path(i: int) -> str:
    """A short, distinct path per file: the smallest entries put the most objects in the byte cap."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    name = ""
    while True:
        name = digits[i % 36] + name
        i //= 36
        if not i:
            return f"models/t/{name}"


def cap_manifest(*, files: int, chunks: int, algorithm: str = "sha256") -> tuple[dict[str, object], int]:
    """A valid manifest of ``files`` empty model files (plus the policy) and about ``chunks`` chunks,
    and the chunk size it uses. Empty files take one 512-byte header block each in the payload."""
    digest_len = hashlib.new(algorithm).digest_size * 2
    entries: list[dict[str, object]] = []
    cursor = 0
    for i in range(files):
        entries.append({"hash": "0" * digest_len, "mode": 0o644, "offset": cursor + BLOCK, "path": _path(i), "size": 0})
        cursor += BLOCK
    policy = {"hash": "0" * digest_len, "mode": 0o644, "offset": cursor + BLOCK, "path": POLICY_PATH, "size": BLOCK}
    cursor += 2 * BLOCK
    payload = cursor + END_OF_ARCHIVE
    payload += (-payload) % RECORD  # whole tar records, as tar(1) writes
    chunk_size = max(-(-payload // chunks), 512)
    while -(-payload // chunk_size) > chunks:
        chunk_size += 1
    manifest: dict[str, object] = {
        "format": FORMAT_NAME, "format_version": 1, "bundle": {"name": "demo", "version": "2.0.0"},
        "created": "2026-01-01T00:00:00Z", "hash_algorithm": algorithm, "chunk_size": chunk_size,
        "payload_size": payload, "chunks": [],
        "components": [{"kind": "model", "name": "t", "files": entries},
                       {"kind": "safeguards", "name": "safeguards", "files": [policy]}],
    }
    return manifest, chunk_size


def write_cap_bundle(out: Path, key: KeyPair, *, files: int, chunks: int, algorithm: str = "sha256") -> bytes:
    """Write a signed bundle at (up to) the given counts; return its manifest bytes. Chunks hold zeros."""
    manifest, chunk_size = cap_manifest(files=files, chunks=chunks, algorithm=algorithm)
    payload = int(manifest["payload_size"])  # type: ignore[call-overload]
    count, last = -(-payload // chunk_size), payload % chunk_size or chunk_size
    full, tail = bytes(chunk_size), bytes(last)
    manifest["chunks"] = [{"hash": hashlib.new(algorithm, tail if i == count - 1 else full).hexdigest(), "name": chunk_name(i),
                           "size": last if i == count - 1 else chunk_size} for i in range(count)]
    data = canonical_json(manifest)
    del manifest
    assert len(data) <= MAX_MANIFEST_BYTES and count <= MAX_CHUNKS and files < MAX_FILES, (len(data), count)
    (out / "chunks").mkdir(parents=True)
    (out / "signatures").mkdir()
    (out / "manifest.json").write_bytes(data)
    (out / "signatures" / signature_file_name(key.keyid)).write_bytes(key.key.sign(data))
    source = out / "chunks" / chunk_name(0)
    for i in range(count - 1):
        if i % LINKS_PER_INODE == 0:
            source = out / "chunks" / chunk_name(i)
            source.write_bytes(full)
        else:
            os.link(source, out / "chunks" / chunk_name(i))
    (out / "chunks" / chunk_name(count - 1)).write_bytes(tail)
    return data


def entries_that_fit(*, chunks: int, algorithm: str = "sha256") -> int:
    """How many empty files fit beside ``chunks`` chunks in the manifest's byte cap: estimated from
    one manifest, then measured on the next (offsets, and so entries, grow with the count)."""
    digest_len = hashlib.new(algorithm).digest_size * 2
    per_chunk = len(canonical_json({"hash": "0" * digest_len, "name": "00000.bin", "size": 12345})) + 1
    files = MAX_FILES - 1
    for _ in range(3):
        manifest, _ = cap_manifest(files=files, chunks=chunks, algorithm=algorithm)
        size = len(canonical_json(manifest)) + chunks * per_chunk
        per_file = size / files
        if size <= MAX_MANIFEST_BYTES:
            return files
        files = int(files - (size - MAX_MANIFEST_BYTES) / per_file) - 50
    return files


_MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True)
sys.stdout.buffer.write(b"%d %d\\n" % (done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.stdout.buffer.write(done.stdout + done.stderr)
"""


def peak_rss(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> tuple[int, int, str]:
    """Run ``gapship ARGS`` and return its exit code, its peak RSS in bytes and its output.

    Measured by a small Python process that runs gapship as its child: a child's ``ru_maxrss``
    counts what it inherited at fork, so gapship is not forked from the test process (whose own size
    would be counted) but from this measurer, which is small."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(gapship_script()), *map(str, args)], cwd=cwd,
                          capture_output=True, timeout=timeout, check=True)
    head, _, rest = done.stdout.partition(b"\n")
    code, kib = head.split()
    return int(code), int(kib) * 1024, rest.decode("utf-8", "replace")
