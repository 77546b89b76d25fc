"""Manifest.to_bytes writes the canonical JSON a piece at a time; the bytes must be exactly
``canonical_json(to_dict())``, what every verifier recomputes and compares (docs/format.md, 4.1)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from gapship.bundler.build import build
from gapship.bundler.deps.freeze import FrozenDependencies, Target
from gapship.bundler.keys import SigningKey
from gapship.bundler.spec import load_spec
from gapship.installer.formats import manifest as manifest_module
from gapship.installer.formats.manifest import Manifest
from gapship.installer.kit import canonical_json
from gapship_testing import write_spec

# Names that JSON escapes or writes as multi-byte UTF-8, and (below) an empty dependencies component,
# whose "files" list is empty.
FILES = {'quo"te\'s.bin': b"q", "back`tick$.txt": b"b", "modèle/naïve-日本/𝄞.bin": b"m", "empty": b""}
FILES |= {f"many/{i:04d}": bytes([i % 256]) for i in range(3)}


def _manifest(tmp_path: Path, files: dict[str, bytes], *, expires: str | None) -> tuple[Manifest, bytes]:
    spec = write_spec(tmp_path / "src", files)
    deps = FrozenDependencies(files=(), target=Target("3.11", "cp", ("linux_x86_64",)), pins=(), bootstrap=())
    out = tmp_path / "bundle"
    build(load_spec(spec), out=out, key=SigningKey.generate(), chunk_size=4096, expires=expires, dependencies=deps,
          now=datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    data = (out / "manifest.json").read_bytes()
    return Manifest.from_bytes(data), data


@pytest.mark.parametrize("expires", [None, "90d"])
@pytest.mark.parametrize("batch", [1, 2, 1000])
def test_manifest_bytes_are_to_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expires: str | None,
                                     batch: int) -> None:
    """Batches of one file, of two (the model's 7 files end in a short batch), and one batch for all."""
    monkeypatch.setattr(manifest_module, "_BATCH", batch)
    manifest, written = _manifest(tmp_path, FILES, expires=expires)
    assert [c.kind for c in manifest.components] == ["model", "safeguards", "dependencies"]
    assert manifest.components[-1].files == ()
    assert (manifest.expires is None) == (expires is None)
    assert manifest.to_bytes() == canonical_json(manifest.to_dict()) == written
