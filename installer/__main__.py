"""``python -m gapship.installer``: the installer's commands alone (no bundler)."""

import sys

from .cli.fast import dispatch

dispatch(sys.argv[1:])  # `audit append` runs without click, and exits (installer/cli/fast.py)

from .cli.group import main  # noqa: E402

main()
