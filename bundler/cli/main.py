"""The ``gapship`` entry point: the installer's commands plus the connected side's (docs/cli.md).

Only names here. Each connected-side command lives in its own module beside this one and registers
itself on the installer's group when first used
(:meth:`~gapship.installer.cli.group.GapshipGroup.add_lazy`), so ``gapship verify`` and
``gapship install`` start without importing the bundler (build, dependency freezing, signing).
"""

from __future__ import annotations

from ...installer.cli.group import cli

for _name in ("keygen", "build", "sign", "authorize", "parity"):
    cli.add_lazy(_name, f"{__package__}.{_name}")
cli.add_lazy("trust", f"{__package__}.trust")  # init, add-key, ...: the connected side of `gapship trust`

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="gapship")
