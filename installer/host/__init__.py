"""What the host keeps between runs: anti-rollback state (``state``), the hash-chained audit log
(``audit``), the files of a trust directory (``trustdir``), and the small filesystem helpers every
writer uses (``atomic``: crash-safe small writes; ``fs``: tree removal); the StrictModes checks on a
prefix (``strict``) and the mark a site install leaves on it (``sitemark``).
"""
