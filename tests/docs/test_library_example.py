"""docs/architecture.md, "Using the library": the example runs as written, on a real bundle at a real
sensitive site (policy, authorization, site file), in a fresh process that never imports click, and
installs what ``gapship install`` would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from gapship_testing import KeyPair
from safeguards_testing import add_authorize_key, authorization, build_bundle, site_file

ROOT = Path(__file__).resolve().parents[2]


def library_example() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("\n## Using the library\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section shows exactly one library example"
    return blocks[0]


def test_library_example_installs_at_a_sensitive_site_without_click(
        tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    release: KeyPair = make_key("release")
    approver: KeyPair = make_key("approver")
    trust: Path = make_trust(release)
    add_authorize_key(trust, approver)
    bundle = build_bundle(tmp_path, release)
    authorization(bundle, approver, name="demo", versions=">=1,<2")
    site = site_file(tmp_path, "agency-x", "inference-audit-log", "content-filter")
    prefix = tmp_path / "prefix"

    code = library_example()
    code, n = re.subn(r'^bundle, trust_dir, prefix = .*$',
                      f"bundle, trust_dir, prefix = Path({str(bundle)!r}), Path({str(trust)!r}), Path({str(prefix)!r})",
                      code, flags=re.M)
    assert n == 1
    code, n = re.subn(r"load_site\(None\)", f"load_site(Path({str(site)!r}))", code)
    assert n == 1
    probe = code + "\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'tqdm')))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"installed demo 1.0.0 at {prefix / 'demo' / '1.0.0'}"
    assert lines[1] == "[]"  # no click, no tqdm: library code alone decided and installed
    current = prefix / "demo" / "current"
    assert sorted(p.name for p in (current / "models").iterdir()) == ["big", "tiny"]  # big: agency-x only
    effective = json.loads((current / "effective-policy.json").read_text())
    assert effective["site"]["site_id"] == "agency-x" and effective["site"]["sensitive"] is True
    assert [a["site"] for a in effective["authorizations"]] == ["agency-x"]
