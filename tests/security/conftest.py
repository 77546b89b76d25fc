"""The site every security test attacks: a trust store, and a prefix where version 1.0.0 of "demo" is
installed and active. Each attack asserts the documented exit code, a one-line message naming the bad
thing (text and ``--json``), an unchanged prefix, 1.0.0 still active and intact, and that the next
install succeeds and leaves no litter.

The key, the real bundles (1.0.0 and the "next" 3.0.0, built by gapship's own bundler) and an installed
1.0.0 prefix are made once per session; each test gets a private copy of that prefix, so a test costs
one copy instead of a key generation, two builds and an install (each with its fsyncs).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gapship.bundler.build import build
from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.spec import load_spec
from gapship_testing import POLICY, KeyPair, run, run_json
from hostile import Crafted, Payload, craft, litter, snapshot

PREVIOUS_FILES = {"config.json": b'{"layers": 1}\n', "weights.bin": b"previous weights " * 100}
NEXT_FILES = {"config.json": b"{}\n", "w.bin": b"next" * 500}
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


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("security-site")
    private, public, _ = keygen("release", base / "keys")
    key = KeyPair("release", private, public, SigningKey.load(private))
    trust = base / "trust"
    trust.mkdir()
    shutil.copy(public, trust / public.name)
    previous = build_real_bundle(base, key, version="1.0.0", files=PREVIOUS_FILES)
    nxt = build_real_bundle(base, key, version="3.0.0", files=NEXT_FILES)
    prefix = base / "prefix"
    code, out = run_json("install", previous, "--trust", trust, "--prefix", prefix)
    assert code == 0, out
    return Template(key, trust, previous, nxt, prefix)


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
                       command: str = "install", next_run: bool = True) -> dict[str, Any]:
        """The attack fails with ``code`` and a one-line message naming the bad thing, in text and in
        ``--json``, and leaves the prefix exactly as it was."""
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
        self.assert_previous_intact()
        if next_run:
            self.assert_next_run_succeeds()
        return error

    def assert_previous_intact(self, version: str | None = None) -> None:
        current = self.home / "current"
        assert current.is_symlink() and str(current.readlink()) == (version or self.previous)
        if version is None:
            for rel, data in PREVIOUS_FILES.items():
                assert (current / "models" / "tiny" / rel).read_bytes() == data
        assert litter(self.home) == []

    def assert_next_run_succeeds(self, bundle: Path | None = None) -> dict[str, Any]:
        """A good install after the failure works and leaves no staging litter behind."""
        code, out = self.install(bundle or self.next_bundle)
        assert code == 0, out
        assert (self.home / "current").readlink() == Path(out["bundle"]["version"])
        assert litter(self.home) == []
        return out


@pytest.fixture
def site(tmp_path: Path, template: Template) -> Site:
    prefix = tmp_path / "prefix"
    shutil.copytree(template.prefix, prefix, symlinks=True)
    s = Site(tmp=tmp_path, key=template.key, trust=template.trust, prefix=prefix, next_bundle=template.next_bundle,
             previous_bundle=template.previous_bundle)
    s.assert_previous_intact()
    return s
