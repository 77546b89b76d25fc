"""atheris target: the manifest parser (installer/formats/manifest.py, ``Manifest.from_bytes``).

Any input must parse or raise the project's own error; any other exception is a crash.

    python tests/fuzz/fuzz_manifest.py -max_total_time=5 CORPUS_DIR

tests/fuzz/test_atheris.py runs it for a few seconds in CI, seeded with a valid manifest.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from gapship.installer.errors import GapshipError
    from gapship.installer.formats.manifest import Manifest


def test_one_input(data: bytes) -> None:
    try:
        manifest = Manifest.from_bytes(data)
    except GapshipError:
        return
    # whatever parses must round-trip to the very bytes that were signed
    assert manifest.to_bytes() == data


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
