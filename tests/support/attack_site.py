"""The site a security test attacks, and the one assertion every refusal goes through
(tests/security/conftest.py makes the fixtures).

Each attack asserts the documented exit code, a one-line message naming the bad thing (text and
``--json``), an unchanged prefix, 1.0.0 still active and intact, and that the next install succeeds and
leaves no litter.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapship.bundler.build import build
from gapship.bundler.spec import load_spec
from gapship_testing import POLICY, KeyPair, run, run_json
from hostile import Crafted, Payload, craft, litter, snapshot

PREVIOUS_FILES = {"config.json": b'{"layers": 1}\n', "weights.bin": b"previous weights " * 100}
NEXT_FILES = {"config.json": b"{}\n", "w.bin": b"next" * 500}
# The victim bundles (demo 2.0.0): 4 chunks of 5120 bytes; the weights reach into the last one, so
# every chunk differs between two bundles with other weights (zero padding alone would make the last
# chunks identical).
VICTIM_CHUNKS = 4
VICTIM_CHUNK_SIZE = 5120


def victim_files(marker: bytes) -> dict[str, bytes]:
    return {"config.json": b'{"v": 2}\n', "weights.bin": (marker * 14000)[:14000]}


def chunk_file(bundle: Path, index: int) -> Path:
    return bundle / "chunks" / f"{index:05d}.bin"


HARNESS = Path(__file__).resolve().parent.parent / "security" / "harness.py"

KINDS = {2: "usage", 3: "integrity", 4: "trust", 5: "policy", 6: "unsafe", 7: "environment"}


def build_real_bundle(base: Path, key: KeyPair, *, version: str, files: dict[str, bytes], name: str = "demo",
                      chunk_size: int = 1 << 20) -> Path:
    """A bundle made by gapship's own bundler (one chunk by default: the bundler fsyncs each chunk)."""
    src = base / f"src-{version}"
    for rel, data in files.items():
        (src / "model" / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / "model" / rel).write_bytes(data)
    (src / "policy.toml").write_bytes(POLICY)
    (src / "spec.toml").write_text(f'[bundle]\nname = "{name}"\nversion = "{version}"\n\n[[model]]\nname = "tiny"\n'
                                   f'source = "model"\n\n[safeguards]\nsource = "policy.toml"\n')
    out = base / f"bundle-{version}"
    build(load_spec(src / "spec.toml"), out=out, key=key.key, chunk_size=chunk_size)
    return out


@dataclass(frozen=True)
class Template:
    key: KeyPair
    trust: Path
    previous_bundle: Path
    next_bundle: Path
    prefix: Path


@dataclass
class Site:
    tmp: Path
    key: KeyPair
    trust: Path
    prefix: Path
    next_bundle: Path
    previous_bundle: Path
    name: str = "demo"
    previous: str = "1.0.0"
    count: int = 0

    @property
    def home(self) -> Path:
        return self.prefix / self.name

    def args(self, command: str, bundle: Path) -> list[str | Path]:
        extra: list[str | Path] = ["--prefix", self.prefix] if command == "install" else []
        return [command, bundle, "--trust", self.trust, *extra]

    def write(self, crafted: Crafted | Payload, *, signers: tuple[KeyPair, ...] | None = None,
              manifest_bytes: bytes | None = None) -> Path:
        """Write a crafted bundle, signed by the site's trusted key unless told otherwise (by default
        an attack assumes a compromised build: the hostile manifest carries a valid signature)."""
        if isinstance(crafted, Payload):
            crafted = craft(crafted)
        self.count += 1
        out = self.tmp / f"hostile{self.count}"
        return crafted.write(out, signers=(self.key,) if signers is None else signers, manifest_bytes=manifest_bytes)

    def install(self, bundle: Path) -> tuple[int, dict[str, Any]]:
        return run_json(*self.args("install", bundle))

    def assert_refused(self, bundle: Path, *, code: int, needles: tuple[str, ...] = (), subject: str | None = None,
                       command: str = "install", next_run: bool = True, busy: bool = False) -> dict[str, Any]:
        """The attack fails with ``code`` and a one-line message naming the bad thing, in text and in
        ``--json``, and leaves the prefix exactly as it was. ``busy``: another install is running, so
        its staging directory is expected."""
        before = snapshot(self.prefix)
        got, out = run_json(*self.args(command, bundle))
        assert got == code, out
        assert out["ok"] is False
        error = out["error"]
        assert error["code"] == code and error["kind"] == KINDS[code], error
        message = error["message"]
        assert "\n" not in message and "\r" not in message, message
        for needle in needles:
            assert needle in message, (needle, message)
        if subject is not None:
            assert error["subject"] == subject, error
        text = run(*self.args(command, bundle))
        assert text.exit_code == code
        assert text.stderr.splitlines()[0] == f"gapship: error: {message}"
        assert text.stdout == ""
        assert snapshot(self.prefix) == before
        self.assert_previous_intact(busy=busy)
        if next_run:
            self.assert_next_run_succeeds()
        return error

    def assert_previous_intact(self, *, busy: bool = False) -> None:
        """1.0.0 is active and serves its exact files; no litter unless another install is running."""
        current = self.home / "current"
        assert current.is_symlink() and str(current.readlink()) == self.previous
        for rel, data in PREVIOUS_FILES.items():
            assert (current / "models" / "tiny" / rel).read_bytes() == data
        if not busy:
            assert litter(self.home) == []

    def assert_next_run_succeeds(self, bundle: Path | None = None) -> dict[str, Any]:
        """A good install after the failure works and leaves no staging litter behind."""
        code, out = self.install(bundle or self.next_bundle)
        assert code == 0, out
        assert (self.home / "current").readlink() == Path(out["bundle"]["version"])
        assert litter(self.home) == []
        return out


def run_harness(fault: str, arg: str, site: Site, bundle: Path, *, command: str = "install",
                wait: bool = True) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    """Run ``gapship COMMAND BUNDLE --json`` for ``site`` in a subprocess with one fault injected
    (tests/security/harness.py); with ``wait=False``, return the running process."""
    argv = [sys.executable, str(HARNESS), fault, arg, "--", *map(str, site.args(command, bundle)), "--json"]
    if not wait:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)
