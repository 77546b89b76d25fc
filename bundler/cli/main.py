"""The ``gapship`` entry point: the installer's commands plus the connected side's (docs/cli.md).

Only names here. Each connected-side command lives in its own module beside this one and registers
itself on the installer's group when first used
(:meth:`~gapship.installer.cli.group.GapshipGroup.add_lazy`), so ``gapship verify`` and
``gapship install`` start without importing the bundler (build, dependency freezing, signing).
``gapship audit append``, the serving stack's command, starts without even click
(installer/cli/fast.py): the group is imported when first asked for (``cli``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ...installer.cli.fast import dispatch

if TYPE_CHECKING:
    from ...installer.cli.group import GapshipGroup

__all__ = ["cli", "main"]


def _group() -> GapshipGroup:
    from ...installer.cli.group import cli

    if "keygen" not in cli.lazy:
        for name in ("keygen", "build", "sign", "authorize", "parity"):
            cli.add_lazy(name, f"{__package__}.{name}")
        cli.add_lazy("trust", f"{__package__}.trust")  # init, add-key, ...: the connected side of `gapship trust`
    return cli


def __getattr__(name: str) -> Any:
    if name == "cli":  # PEP 562: `from gapship.bundler.cli.main import cli` still works
        return _group()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    dispatch(sys.argv[1:])  # `gapship audit append` runs here and exits (installer/cli/fast.py)
    _group()(prog_name="gapship")
