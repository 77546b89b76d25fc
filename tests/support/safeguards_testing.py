"""Helpers for the site policy, authorization, audit and status tests (docs/safeguards.md).

``isolated_host`` points every host default (site file, audit log, host key) into tmp_path, so no
test can read /etc/gapship or write /var/log or /var/lib, whatever it forgets to pass. Import it into
a test module and name it in ``pytestmark = pytest.mark.usefixtures("isolated_host")``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from gapship.bundler.authorize import create, selector, write
from gapship.bundler.build import build
from gapship.bundler.spec import load_spec
from gapship.installer.cli import audit as _cli_audit
from gapship.installer.cli import _host as _cli_host
from gapship.installer.host import audit
from gapship.installer.formats import site
from gapship_testing import KeyPair

# Two sites, one sensitive; "big" is enabled only at the sensitive one.
SITE_POLICY = b"""schema_version = 1
prohibited_uses = ["weapons targeting"]

[sites.demo-site]
safeguards = ["inference-audit-log"]

[sites.agency-x]
sensitive = true
safeguards = ["inference-audit-log", "content-filter"]

[sites.lab]
safeguards = []

[models.tiny]
sites = ["demo-site", "agency-x"]

[models.big]
sites = ["agency-x"]
"""

MODELS = {
    "tiny": {"config.json": b'{"hidden": 4}\n', "weights.bin": bytes(range(256)) * 8},
    "big": {"weights.bin": bytes(reversed(range(256))) * 12, "sub/extra.txt": b"extra\n"},
}


@dataclass(frozen=True)
class Host:
    root: Path
    default_log: Path
    default_site: Path
    default_key: Path


@pytest.fixture
def isolated_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    host = Host(root=tmp_path / "host", default_log=tmp_path / "host/var/log/gapship/audit.jsonl",
                default_site=tmp_path / "host/etc/gapship/site.toml",
                default_key=tmp_path / "host/var/lib/gapship/host.key")
    monkeypatch.setattr(audit, "DEFAULT_LOG", host.default_log)
    monkeypatch.setattr(audit, "DEFAULT_HOST_KEY", host.default_key)
    monkeypatch.setattr(_cli_audit, "DEFAULT_LOG", host.default_log)
    monkeypatch.setattr(_cli_audit, "DEFAULT_HOST_KEY", host.default_key)
    monkeypatch.setattr(site, "DEFAULT_SITE_CONFIG", host.default_site)
    assert _cli_host.site_module is site
    return host


def build_bundle(root: Path, key: KeyPair, *, name: str = "demo", version: str = "1.0.0",
                 models: dict[str, dict[str, bytes]] | None = None, policy: bytes = SITE_POLICY,
                 chunk_size: int = 1024) -> Path:
    """A signed bundle of several models at root/bundle-<name>-<version>."""
    base = root / f"src-{name}-{version}"
    spec = [f'[bundle]\nname = "{name}"\nversion = "{version}"\n']
    for model, files in (models or MODELS).items():
        for rel, data in files.items():
            target = base / model / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        spec.append(f'[[model]]\nname = "{model}"\nsource = "{model}"\n')
    (base / "policy.toml").write_bytes(policy)
    spec.append('[safeguards]\nsource = "policy.toml"\n')
    (base / "spec.toml").write_text("\n".join(spec))
    out = root / f"bundle-{name}-{version}"
    build(load_spec(base / "spec.toml"), out=out, key=key.key, chunk_size=chunk_size)
    return out


def site_file(root: Path, site_id: str, *safeguards: str) -> Path:
    path = root / f"site-{site_id}-{len(safeguards)}.toml"
    path.write_text(f'site_id = "{site_id}"\nsafeguards = {json.dumps(list(safeguards))}\n')
    return path


def add_authorize_key(trust: Path, key: KeyPair) -> None:
    """Legacy mode: authorize-role keys live in TRUSTDIR/authorize/."""
    (trust / "authorize").mkdir(exist_ok=True)
    (trust / "authorize" / key.public.name).write_bytes(key.public.read_bytes())


def authorization(out: Path, key: KeyPair, *, site_id: str = "agency-x", manifest_digest: str | None = None,
                  name: str | None = None, versions: str | None = None, expires: str = "30d",
                  require: tuple[str, ...] = (), now: datetime | None = None) -> Path:
    """Write a signed authorization directory at ``out`` (or into the bundle directory ``out``)."""
    auth = create(site=site_id, bundle=selector(manifest_digest=manifest_digest, name=name, versions=versions),
                  expires=expires, require=require, now=now or datetime.now(timezone.utc))
    return write(auth, keys=[key.key], out=out).path


def digest_of(bundle: Path) -> str:
    return "sha256:" + hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


def log_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]
