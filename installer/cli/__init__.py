"""The disconnected side's command line (click): one module per command or command group, and
``group`` for the ``gapship`` group, the error-to-exit mapping and the output helpers. Only this
package and :mod:`gapship.bundler.cli` import click or tqdm; every command calls library code.
"""
