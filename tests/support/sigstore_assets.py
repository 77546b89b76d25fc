"""The real sigstore bundles in ``tests/assets/sigstore`` (see its README.md: origin and license), described once.

They live in the repository, so a fresh clone runs every sigstore test; GAPSHIP_SIGSTORE_ASSETS points the
tests at another copy. The artifacts are not gapship
manifests: the verification takes arbitrary bytes, so the tests verify the artifacts themselves.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ASSETS = Path(os.environ.get("GAPSHIP_SIGSTORE_ASSETS", REPO / "tests" / "assets" / "sigstore"))

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
GITHUB_OAUTH = "https://github.com/login/oauth"
RFC8785_RELEASE = "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2"


@dataclass(frozen=True)
class Case:
    """One sigstore bundle over one artifact, with the root and identity it verifies under."""

    artifact: str  # relative to ASSETS
    bundle: str
    root: str  # "production" or "staging"
    identity: str
    issuer: str

    @property
    def artifact_bytes(self) -> bytes:
        return (ASSETS / self.artifact).read_bytes()

    @property
    def bundle_bytes(self) -> bytes:
        return (ASSETS / self.bundle).read_bytes()

    @property
    def trusted_root(self) -> Path:
        return ASSETS / self.root / "trusted_root.json"


PRODUCTION = Case("production/bundle_v3_github.whl", "production/bundle_v3_github.whl.sigstore", "production",
                  RFC8785_RELEASE, GITHUB_ISSUER)
STAGING = Case("staging/bundle_v3.txt", "staging/bundle_v3.txt.sigstore", "staging",
               "william@yossarian.net", GITHUB_OAUTH)
STAGING_REKOR_V2 = Case("staging/staging-rekor-v2.txt", "staging/staging-rekor-v2.txt.sigstore.json", "staging",
                        "jku@goto.fi", GITHUB_OAUTH)
GOOD = (PRODUCTION, STAGING, STAGING_REKOR_V2)
# The CVE-2022-36056 bundle carries a certificate for the same identity as STAGING.
CVE_2022_36056 = Case("malformed/bundle_cve_2022_36056.txt", "malformed/bundle_cve_2022_36056.txt.sigstore",
                      "staging", "william@yossarian.net", GITHUB_OAUTH)
NO_LOG_ENTRY = Case("malformed/bundle_no_log_entry.txt", "malformed/bundle_no_log_entry.txt.sigstore", "staging",
                    "william@yossarian.net", GITHUB_OAUTH)
INVALID_VERSION = Case("malformed/bundle_invalid_version.txt", "malformed/bundle_invalid_version.txt.sigstore",
                       "staging", "william@yossarian.net", GITHUB_OAUTH)


def require_assets() -> None:
    if not (ASSETS / "README.md").is_file():
        pytest.fail(f"sigstore test assets not found at {ASSETS} (tests/assets/sigstore in the repository, "
                    "or GAPSHIP_SIGSTORE_ASSETS)")


def flip_bit(data: bytes, index: int | None = None) -> bytes:
    out = bytearray(data)
    out[len(out) // 2 if index is None else index] ^= 0x01
    return bytes(out)


def block_sigstore(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ``import sigstore...`` fail, as when the gapship[sigstore] extra is not installed."""
    for name in [m for m in sys.modules if m == "sigstore" or m.startswith("sigstore.")] or ["sigstore"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "sigstore", None)
