"""gapship's installer: the trusted base that verifies and installs bundles on a disconnected host.

It imports nothing from ``gapship.bundler`` (tests/test_layout.py). The public API is ``__all__``
below: read a bundle directory, verify it against a trust directory, decide for a site, install it::

    from gapship.installer import TrustStore, install, read_raw_bundle, verify_manifest

    trust = TrustStore.from_dir(trust_dir)
    verified = verify_manifest(read_raw_bundle(bundle), trust=trust)
    install(bundle, verified, prefix=prefix)

Names are loaded on first use, so ``import gapship.installer`` stays cheap for the CLI
(docs/architecture.md, "Using the library").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_PUBLIC = {
    "GapshipError": ".errors", "IntegrityError": ".errors", "TrustError": ".errors", "PolicyError": ".errors",
    "UnsafeContentError": ".errors", "UsageError": ".errors", "HostError": ".errors", "EXIT_CODES": ".errors",
    "Manifest": ".formats.manifest", "Site": ".formats.site", "load_site": ".formats.site",
    "RawBundle": ".bundle.files", "read_raw_bundle": ".bundle.files",
    "verify_chunks": ".bundle.verify", "verify_chunk_file": ".bundle.verify",
    "TrustStore": ".trust", "Allowances": ".trust", "VerifiedManifest": ".trust", "verify_manifest": ".trust",
    "SiteDecision": ".safeguards", "decide_for_site": ".safeguards",
    "HostState": ".host.state", "InstallResult": ".deploy.install", "install": ".deploy.install",
}
__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:
    from .bundle.files import RawBundle, read_raw_bundle
    from .bundle.verify import verify_chunk_file, verify_chunks
    from .errors import (
        EXIT_CODES, GapshipError, HostError, IntegrityError, PolicyError, TrustError, UnsafeContentError, UsageError,
    )
    from .formats.manifest import Manifest
    from .formats.site import Site, load_site
    from .host.state import HostState
    from .deploy.install import InstallResult, install
    from .safeguards import SiteDecision, decide_for_site
    from .trust import Allowances, TrustStore, VerifiedManifest, verify_manifest


def __getattr__(name: str) -> Any:
    """PEP 562: import the module that defines a public name when the name is first used."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value
