"""The exit code table (installer/errors.py): one class per code, and ``--help`` lists every code."""

from __future__ import annotations

import inspect
import subprocess
import sys

from gapship.installer import errors
from gapship.installer.errors import EXIT_CODES, GapshipError
from gapship_testing import run

# The base and its direct subclasses define the codes; deeper subclasses (e.g. the sigstore refusals
# under TrustError) refine a kind and must keep their parent's code.
CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
           if c is GapshipError or GapshipError in c.__bases__]
REFINEMENTS = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, GapshipError) and c not in CLASSES]


def test_every_error_class_has_its_own_code_and_kind() -> None:
    assert len(CLASSES) == 7  # the base (internal) and one per documented code 2..7
    codes = sorted(c.exit_code for c in CLASSES)
    assert codes == [1, 2, 3, 4, 5, 6, 7]
    assert len({c.kind for c in CLASSES}) == len(CLASSES)


def test_refinements_keep_their_parents_code() -> None:
    for cls in REFINEMENTS:
        parent = next(c for c in CLASSES if issubclass(cls, c) and c is not GapshipError)
        assert (cls.exit_code, cls.kind) == (parent.exit_code, parent.kind), cls


def test_table_lists_exactly_the_codes_in_use() -> None:
    table = [code for code, _ in EXIT_CODES]
    assert table == [0, *sorted(c.exit_code for c in CLASSES)]


def test_error_json_fields() -> None:
    error = errors.IntegrityError("chunks/00001.bin is missing", subject="chunks/00001.bin", hint="copy it again")
    assert error.to_dict() == {"code": 3, "kind": "integrity", "message": "chunks/00001.bin is missing",
                               "subject": "chunks/00001.bin", "hint": "copy it again"}


def test_help_lists_every_exit_code() -> None:
    result = run("--help")
    assert result.exit_code == 0
    lines = [line.strip() for line in result.stdout.splitlines()]
    for code, text in EXIT_CODES:
        assert f"{code}  {text}" in lines


def test_installer_alone_lists_every_exit_code_and_imports_no_bundler() -> None:
    """``python -m gapship.installer`` is all a site needs; it must not pull in the bundler."""
    probe = ("import runpy, sys\n"
             "sys.argv = ['gapship', '--help']\n"
             "try:\n    runpy.run_module('gapship.installer', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "loaded = sorted(m for m in sys.modules if m.startswith('gapship.bundler'))\n"
             "print('BUNDLER:', loaded, 'EXIT:', code)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "BUNDLER: [] EXIT: 0" in result.stdout
    lines = [line.strip() for line in result.stdout.splitlines()]
    for code, text in EXIT_CODES:
        assert f"{code}  {text}" in lines
    commands = {line.split()[0] for line in lines[lines.index("Commands:") + 1:] if line}
    assert {"verify", "install", "inspect"} <= commands and not {"build", "keygen", "sign"} & commands
