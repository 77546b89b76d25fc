"""gapship's bundler: the connected side that freezes, chunks and signs bundles.

It reuses the manifest model, hashing and key handling of ``gapship.installer``; the installer
never imports from here. The public API is ``__all__`` below::

    from gapship.bundler import SigningKey, build, load_spec

    result = build(load_spec(spec_path), out=out, key=SigningKey.load(key_path))

Names are loaded on first use, so the ``gapship`` entry point (``gapship.bundler.cli.main``) does not
import the build machinery for ``gapship verify`` (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module (relative to this package) that defines it
_PUBLIC = {
    "BundleSpec": ".spec", "load_spec": ".spec",
    "BuildResult": ".build", "build": ".build", "parse_size": ".build",
    "SigningKey": ".keys", "keygen": ".keys",
    "sign_bundle": ".sign", "sign_bundle_sigstore": ".sign",
    "create_authorization": ".authorize", "write_authorization": ".authorize",
    "init_trust": ".roots", "next_version": ".roots", "attach_roots": ".roots",
}
_RENAMED = {"create_authorization": "create", "write_authorization": "write"}  # short names in their module
__all__ = list(_PUBLIC)

if TYPE_CHECKING:
    from .authorize import create as create_authorization, write as write_authorization
    from .build import BuildResult, build, parse_size
    from .keys import SigningKey, keygen
    from .roots import attach_roots, init_trust, next_version
    from .sign import sign_bundle, sign_bundle_sigstore
    from .spec import BundleSpec, load_spec


def __getattr__(name: str) -> Any:
    """PEP 562: import the module that defines a public name when the name is first used."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value
