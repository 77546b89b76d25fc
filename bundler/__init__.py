"""gapship's bundler: the connected side that freezes, chunks and signs bundles.

It reuses the manifest model, hashing and key handling of ``gapship.installer``; the installer
never imports from here.
"""

from __future__ import annotations
