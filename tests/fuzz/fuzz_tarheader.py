"""atheris target: the tar header checker (installer/deploy/tarstream.py, ``parse_header_region`` and
``check_header_region``).

Any header region must be accepted as exactly the expected member or raise the project's own error;
any other exception is a crash.

    python tests/fuzz/fuzz_tarheader.py -max_total_time=5 CORPUS_DIR
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from gapship.installer.deploy.tarstream import check_header_region, parse_header_region
    from gapship.installer.errors import GapshipError
    from gapship.installer.formats.manifest import FileEntry

EXPECTED = FileEntry(path="models/tiny/weights.bin", size=1000, mode=0o644, hash="0" * 64, offset=1024)


def test_one_input(data: bytes) -> None:
    try:
        member = parse_header_region(data, subject=EXPECTED.path)
    except GapshipError:
        return
    assert isinstance(member.path, str) and isinstance(member.size, int) and isinstance(member.mode, int)
    try:
        check_header_region(data, EXPECTED)
    except GapshipError:
        return
    # accepted: it must describe exactly the expected regular file
    assert (member.path, member.size, member.mode) == (EXPECTED.path, EXPECTED.size, EXPECTED.mode)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
