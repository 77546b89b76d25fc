"""The documents gapship reads and writes, as pure models: bytes in, checked objects out, no I/O.

``manifest`` (manifest.json), ``root`` (root.json, the trust root), ``authorization``
(authorization.json, site authorizations), ``policy`` (safeguards/policy.toml), ``site`` (the site
file), ``paths`` (the rules for a path a bundle may carry) and ``timestamps`` (gapship's UTC times).
Each format lives in one module; the JSON plumbing they share is :mod:`gapship.installer.kit`.
"""
