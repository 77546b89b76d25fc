"""The connected side's commands (click): one module per command or command group, registered
on the installer's ``gapship`` group by ``main`` (the entry point) when first used.
"""
