"""Freezing a bundle's Python dependencies on the connected side: resolve and download wheels for
the site's target (``freeze``), read pylock.toml locks (``pylock``), and rebuild gapship's own wheel
for a bootstrap bundle (``selfwheel``).
"""
