"""``python -m gapship.installer``: the installer's commands alone (no bundler)."""

from .cli import main

main()
