#!/usr/bin/env bash
# Set up and pass the tests (the README's test command; .ci/run calls it).
# Installs gapship (not editable) with its test extras into .venv, type-checks the package, runs pytest.
# Arguments are passed to pytest, e.g. ./test.sh -k install -x
# Fast inner loop: ./test.sh -m "not slow" leaves out the tests marked slow (hypothesis, atheris, the
# 4 GiB payload, pip and venv runs); .ci/run runs everything.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
rm -rf build  # setuptools reuses build/lib, which can still hold modules deleted from the tree
.venv/bin/python -m pip install -q --disable-pip-version-check '.[test]'
# mypy from .venv, not the checkout: mypy always searches its working directory first, where installer/
# would stand in for pypa's `installer` distribution (which installer/deploy/wheels.py imports).
(cd .venv && bin/python -m mypy --config-file ../pyproject.toml --cache-dir ../.mypy_cache -p gapship.installer -p gapship.bundler)
# Not `python -m pytest`: that puts the checkout on sys.path, where installer/ would shadow pypa's installer.
exec .venv/bin/pytest "$@"
