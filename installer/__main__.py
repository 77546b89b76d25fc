"""``python -m gapship.installer``: the installer's commands alone (no bundler)."""

from .cli.group import main

main()
