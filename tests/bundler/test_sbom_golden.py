"""The SBOM's and the provenance statement's bytes do not change when their rendering does.

``build --check-against`` compares a rebuild with a bundle built before, byte for byte (docs/sbom.md,
"Independent rebuilds"), so a new way of writing either file (streamed, for the file cap's memory
bound) must give the bytes the old one gave. The golden files were written by the implementation
that built one dict and serialised it whole (before the streamed one), for this small bundle: two
models, one with a card, non-ASCII and quoted file names, three wheels, the policy. The tools'
versions, which the SBOM and the statement record, are pinned here so a version bump does not
change the bytes."""

from __future__ import annotations

import os
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest

from gapship.bundler import provenance as provenance_module, sbom as sbom_module
from gapship.bundler.build import build
from gapship.bundler.deps.freeze import FrozenDependencies
from gapship.bundler.spec import load_spec
from gapship.installer.deploy.deps import Target
from gapship.installer.formats.manifest import Manifest
from gapship.installer.provenance import PROVENANCE, STATEMENT
from gapship_testing import KeyPair, noise, run, write_spec

GOLDEN = Path(__file__).parent / "golden"
CARD = '[model.card]\nlicense = "Apache-2.0"\ntask = "text-generation"\narchitecture = "LlamaForCausalLM"\n' \
       'base_model = "org/base-7b"\ndescription = "a tiny \\"model\\" – ü"\n'


def _wheel(folder: Path, name: str, version: str, metadata: str) -> Path:
    """A wheel with fixed timestamps, so its bytes (and hash) are the same on every run."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, text in ((f"{name}/__init__.py", ""),
                             (f"{name}-{version}.dist-info/METADATA",
                              f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{metadata}"),
                             (f"{name}-{version}.dist-info/WHEEL",
                              "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")):
            z.writestr(zipfile.ZipInfo(member, date_time=(2026, 1, 1, 0, 0, 0)), text)
    return path


def _bundle(tmp_path: Path, key: KeyPair, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sbom_module, "_version", lambda distribution: f"{distribution}-pinned")
    monkeypatch.setattr(provenance_module, "__version__", "gapship-pinned")
    files = {"w.bin": noise(3000, seed=2), "config.json": b"{}\n", "sub/na\u00efve \u00fc.bin": b"x" * 700,
             'sub/"quoted" name.txt': b"", "sub/empty": b""}
    spec = write_spec(tmp_path / "src", files)
    other = tmp_path / "src" / "second"
    other.mkdir()
    (other / "a.safetensors").write_bytes(noise(5000, seed=3))
    spec.write_text(spec.read_text().replace('source = "model"\n', 'source = "model"\n' + CARD)
                    + '\n[[model]]\nname = "second"\nsource = "second"\n')
    policy = tmp_path / "src" / "policy.toml"
    policy.write_text(policy.read_text() + '\n[models.second]\nsites = ["test-site"]\n')
    wheels = [_wheel(tmp_path / "wheels", "alpha", "1.2.0", "License-Expression: MIT OR Apache-2.0\n"
                     "Requires-Dist: beta>=2\nRequires-Dist: gamma; python_version < '3.0'\n"),
              _wheel(tmp_path / "wheels", "beta", "2.0.1", ""),
              _wheel(tmp_path / "wheels", "gamma", "0.1", "License: BSD License with a twist\n")]
    deps = FrozenDependencies(files=tuple((w, f"dependencies/wheels/{w.name}") for w in wheels),
                              target=Target("3.11", "cp", ("linux_x86_64",)), pins=(), bootstrap=())
    out = tmp_path / "bundle"
    build(load_spec(spec), out=out, key=key.key, chunk_size=4096, dependencies=deps,
          now=datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc))
    return out


def _outputs(bundle: Path) -> tuple[bytes, bytes]:
    done = run("inspect", bundle, "--sbom")
    assert done.exit_code == 0, done.stderr
    return done.stdout_bytes, (bundle / PROVENANCE / STATEMENT).read_bytes()


def test_sbom_and_provenance_bytes_are_those_of_the_golden_files(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    sbom, statement = _outputs(_bundle(tmp_path, make_key("release"), monkeypatch))
    if os.environ.get("GAPSHIP_WRITE_GOLDEN") == "1":  # only to make them anew, on purpose
        (GOLDEN / "sbom.cdx.json").write_bytes(sbom)
        (GOLDEN / "statement.json").write_bytes(statement)
    assert sbom == (GOLDEN / "sbom.cdx.json").read_bytes()
    assert statement == (GOLDEN / "statement.json").read_bytes()
    manifest = Manifest.from_bytes((tmp_path / "bundle" / "manifest.json").read_bytes())
    assert len(list(manifest.files())) == 11  # 6 + 1 model files, 3 wheels, the policy... and the SBOM
