"""Helpers shared by the tests (tests/support is on pytest's pythonpath; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from click.testing import CliRunner, Result

from gapship.bundler.cli.main import cli
from gapship.bundler.keys import SigningKey

POLICY = b"""schema_version = 1
prohibited_uses = ["weapons targeting"]

[sites.test-site]
safeguards = ["inference-audit-log"]

[models.tiny]
sites = ["test-site"]
"""


@dataclass(frozen=True)
class KeyPair:
    name: str
    private: Path
    public: Path
    key: SigningKey

    @property
    def keyid(self) -> str:
        return self.key.public.keyid


def run(*args: str | Path) -> Result:
    """Run the gapship CLI in-process; return click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_json(*args: str | Path) -> tuple[int, dict[str, object]]:
    result = run(*args, "--json")
    return result.exit_code, json.loads(result.stdout)


def write_spec(base: Path, files: dict[str, bytes], *, name: str = "demo", version: str = "1.0.0",
               model: str = "tiny", policy: bytes = POLICY) -> Path:
    """Write base/model/<files>, base/policy.toml and base/spec.toml; return the spec. The make_spec
    fixture calls it; module-scoped fixtures, which cannot use make_spec, call it directly."""
    for rel, data in files.items():
        target = base / "model" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (base / "policy.toml").write_bytes(policy)
    spec = base / "spec.toml"
    spec.write_text(
        f'[bundle]\nname = "{name}"\nversion = "{version}"\n\n'
        f'[[model]]\nname = "{model}"\nsource = "model"\n\n'
        f'[safeguards]\nsource = "policy.toml"\n'
    )
    return spec


def gapship_script() -> Path:
    """The installed ``gapship`` console script of the interpreter running the tests."""
    return Path(sys.executable).parent / "gapship"


def noise(size: int, seed: int) -> bytes:
    """Deterministic bytes that do not repeat, so no two chunks of a bundle are alike (a swapped or
    renamed chunk must change the bytes, or the test could not fail)."""
    return random.Random(seed).randbytes(size)


def assert_error(out: dict[str, object], *, code: int, kind: str, subject: str) -> str:
    """Check a ``--json`` failure object; return its message for further checks."""
    assert out["ok"] is False, out
    error = out["error"]
    assert isinstance(error, dict), out
    assert (error["code"], error["kind"], error["subject"]) == (code, kind, subject), error
    message = error["message"]
    assert isinstance(message, str) and "\n" not in message, error
    return message


def tree(root: Path) -> dict[str, bytes | str]:
    """A snapshot of everything under root (files by content, symlinks by target) to prove nothing changed."""
    out: dict[str, bytes | str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def write_payload(folder: Path, sources: dict[str, bytes], *, chunk_size: int, declared: dict[str, int] | None = None,
                  hash_threads: int | None = None) -> Any:
    """Lay ``sources`` (name -> bytes, written under ``folder/src``) into a payload in
    ``folder/chunks`` with gapship's PayloadWriter, as ``models/m/<name>``; ``declared`` gives a size
    other than the bytes' own (a source that changes under the build). Returns the Payload."""
    from gapship.bundler.payload import PayloadWriter

    (folder / "chunks").mkdir(parents=True)
    writer = PayloadWriter(folder / "chunks", chunk_size=chunk_size, algorithm="sha256", mtime=1_700_000_000,
                           hash_threads=hash_threads)
    try:
        for name, data in sources.items():
            src = folder / "src" / name
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(data)
            writer.add(src, f"models/m/{name}", (declared or {}).get(name, len(data)), 0o644)
        return writer.finish()
    finally:
        writer.abort()
