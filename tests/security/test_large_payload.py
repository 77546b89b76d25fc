"""Sizes and offsets past 4 GiB (../shared/guides/security.md: "one test crosses 4 GiB (sparse files make
it cheap)"; RAUC CVE-2026-34155 signed only the first bytes of a bundle over 2 GiB).

The bundle is crafted, not built: a 4 GiB + 4 KiB file of zeros, then a small file whose data starts
past 4 GiB, then the policy. Every chunk that holds only zeros is a sparse file (no disk space, reads
at memory speed) and shares one hash, computed once; the zero file's own hash is a constant (below,
with the command that recomputes it). So crafting costs well under a second, and the test's time is
the installer's own: hashing 4 GiB twice (chunks, then the file it writes) and writing 4 GiB.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from attack_site import Site
from gapship.installer.kit import canonical_json
from gapship_testing import POLICY, run_json
from hostile import manifest_dict, pad, pax_header, sha256, sign

CHUNK = 64 * 1024**2
ZEROS = 2**32 + 4096
# head -c 4294971392 /dev/zero | sha256sum
ZEROS_SHA256 = "5bc8222d078b1d6dab4a1d75403860f91afffe8a6944d469e496f553d296be3d"
TAIL = b"the bytes past 4 GiB are covered by the signature too\n" * 20


def _sparse_bundle(out: Path, site: Site) -> tuple[Path, int]:
    """Write the bundle; return it and the payload offset of the tail file's data."""
    zeros_header = pax_header("models/tiny/zeros.bin", ZEROS)
    tail_start = len(zeros_header) + pad(ZEROS)  # where the tail's header begins
    tail_header = pax_header("models/tiny/tail.bin", len(TAIL))
    policy_start = tail_start + len(tail_header) + pad(len(TAIL))
    policy_header = pax_header("safeguards/policy.toml", len(POLICY))
    end = policy_start + len(policy_header) + pad(len(POLICY))
    size = pad(end + 1024, 10240)
    files = [
        {"path": "models/tiny/zeros.bin", "size": ZEROS, "mode": 0o644, "hash": ZEROS_SHA256,
         "offset": len(zeros_header)},
        {"path": "models/tiny/tail.bin", "size": len(TAIL), "mode": 0o644, "hash": sha256(TAIL),
         "offset": tail_start + len(tail_header)},
    ]
    policy = {"path": "safeguards/policy.toml", "size": len(POLICY), "mode": 0o644, "hash": sha256(POLICY),
              "offset": policy_start + len(policy_header)}
    # the non-zero bytes of the payload, by position
    islands = {0: zeros_header, tail_start: tail_header + TAIL, policy_start: policy_header + POLICY}

    def chunk_bytes(start: int, length: int) -> bytes | None:
        """The chunk's bytes, or None when it holds only zeros."""
        touched = [(pos, data) for pos, data in islands.items() if pos < start + length and pos + len(data) > start]
        if not touched:
            return None
        buf = bytearray(length)
        for pos, data in touched:
            lo, hi = max(pos, start), min(pos + len(data), start + length)
            buf[lo - start:hi - start] = data[lo - pos:hi - pos]
        return bytes(buf)

    zero_hash = hashlib.sha256(bytes(CHUNK)).hexdigest()
    (out / "chunks").mkdir(parents=True)
    (out / "signatures").mkdir()
    entries = []
    for index, start in enumerate(range(0, size, CHUNK)):
        length = min(CHUNK, size - start)
        data = chunk_bytes(start, length)
        path = out / "chunks" / f"{index:05d}.bin"
        with path.open("wb") as f:
            if data is None:
                f.truncate(length)  # sparse: a hole, not 64 MiB of written zeros
            else:
                f.write(data)
        digest = zero_hash if data is None and length == CHUNK else hashlib.sha256(data or bytes(length)).hexdigest()
        entries.append({"name": path.name, "size": length, "hash": digest})
    components = [{"kind": "model", "name": "tiny", "files": files},
                  {"kind": "safeguards", "name": "safeguards", "files": [policy]}]
    manifest = manifest_dict(entries, components, chunk_size=CHUNK)
    assert manifest["payload_size"] == size
    (out / "manifest.json").write_bytes(canonical_json(manifest))
    sign(out, site.key)
    return out, files[1]["offset"]


@pytest.mark.slow
def test_installs_and_verifies_payload_past_4_gib(site: Site, tmp_path: Path) -> None:
    bundle, tail_offset = _sparse_bundle(tmp_path / "big", site)
    assert tail_offset > 2**32
    try:
        code, out = run_json("verify", bundle, "--trust", site.trust)
        assert code == 0, out
        assert out["bytes_checked"] > 2**32

        code, out = run_json("install", bundle, "--trust", site.trust, "--prefix", site.prefix)
        assert code == 0, out
        root = site.home / "current" / "models" / "tiny"
        assert (root / "tail.bin").read_bytes() == TAIL
        zeros = root / "zeros.bin"
        assert zeros.stat().st_size == ZEROS
        with zeros.open("rb") as f:  # spot checks across 2 and 4 GiB; the installer checked the hash
            for at in (0, 2**31 - 4096, 2**32 - 4096, ZEROS - 8192):
                f.seek(at)
                assert f.read(8192) == bytes(8192)
    finally:
        shutil.rmtree(site.home / "2.0.0", ignore_errors=True)  # 4 GiB of real disk: not for pytest to keep

    # one byte changed past 4 GiB: the signed chunk list covers it, in a full and a one-chunk check
    chunk = bundle / "chunks" / f"{tail_offset // CHUNK:05d}.bin"
    with chunk.open("r+b") as f:
        f.seek(tail_offset % CHUNK)
        byte = f.read(1)
        f.seek(tail_offset % CHUNK)
        f.write(bytes([byte[0] ^ 0x01]))
    subject = f"chunks/{chunk.name}"
    code, out = run_json("verify", bundle, "--trust", site.trust, "--chunk", chunk)
    assert code == 3 and out["error"]["subject"] == subject, out
    code, out = run_json("verify", bundle, "--trust", site.trust)
    assert code == 3 and out["error"]["subject"] == subject, out
