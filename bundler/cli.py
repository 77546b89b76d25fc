"""The ``gapship`` entry point: the installer's commands plus the connected side's (docs/cli.md).

Only names here. Each connected-side module registers its commands on the installer's group when
first used (:meth:`~gapship.installer.cli.GapshipGroup.add_lazy`), so ``gapship verify`` and
``gapship install`` start without importing the bundler (build, dependency freezing, signing).
"""

from __future__ import annotations

from ..installer.cli import cli

_BUILD = f"{__package__}._cli_build"
for _name in ("keygen", "build", "sign"):
    cli.add_lazy(_name, _BUILD)
cli.add_lazy("authorize", f"{__package__}._cli_authorize")
cli.add_lazy("trust", f"{__package__}.trust_cli")  # init, add-key, ...: the connected side of `gapship trust`

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="gapship")
