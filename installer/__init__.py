"""gapship's installer: the trusted base that verifies and installs bundles on a disconnected host.

It imports nothing from ``gapship.bundler``.
"""

from __future__ import annotations

__version__ = "0.1.0"
