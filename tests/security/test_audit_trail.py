"""Issue 13, class 8: the exported trail shows what was cut (docs/safeguards.md, "Cross-checks").

Each receipt and each floor change keeps the sequence number and hash of its install's audit intent
record. ``audit verify`` and ``audit export`` check them against the log; the export carries the check
in its signed header, so ``audit verify --export e2 --previous e1`` fails when records made since e1 were
cut off the end of the log before e2 was made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attack_site import Site
from gapship_testing import run_json


class Trail:
    """The site's prefix, installed from with an audit log, and its exports."""

    def __init__(self, site: Site, tmp_path: Path) -> None:
        self.site, self.tmp = site, tmp_path
        self.log = tmp_path / "audit.jsonl"
        self.key = tmp_path / "host" / "host.key"

    def install(self, bundle: Path, *extra: str) -> dict[str, Any]:
        code, out = run_json("install", bundle, "--trust", self.site.trust, "--prefix", self.site.prefix,
                             "--audit-log", self.log, *extra)
        assert code == 0, out
        return out

    def export(self, name: str) -> tuple[int, dict[str, Any]]:
        return run_json("audit", "export", "--out", self.tmp / name, "--log", self.log, "--host-key", self.key)

    def verify_export(self, name: str, previous: str) -> tuple[int, dict[str, Any]]:
        return run_json("audit", "verify", "--export", self.tmp / name, "--pubkey", self.key.with_suffix(".pub"),
                        "--previous", self.tmp / previous)

    def cut_to(self, lines: int) -> None:
        """What root can do to the log: drop its last lines (they were never exported)."""
        kept = self.log.read_bytes().splitlines(keepends=True)[:lines]
        self.log.write_bytes(b"".join(kept))

    def downgrade_since_first_export(self) -> None:
        """3.0.0 installed and exported (e1), then 1.0.0 put back with --allow-downgrade."""
        self.install(self.site.next_bundle)
        code, out = self.export("e1")
        assert code == 0 and out["lines"] == 2, out
        assert self.install(self.site.previous_bundle, "--allow-downgrade")["overrides"] == ["downgrade"]
        assert len(self.log.read_bytes().splitlines()) == 4


def test_export_after_cutting_a_downgrade_record_shows_the_cut(site: Site, tmp_path: Path) -> None:
    """The issue's case: the records of an --allow-downgrade made since e1 are cut off the log; e2 still
    extends e1, but its signed header records that the host state names a record the log lacks, and
    `audit verify --export e2 --previous e1` fails (exit 3) saying so."""
    trail = Trail(site, tmp_path)
    trail.downgrade_since_first_export()
    trail.cut_to(2)
    code, out = trail.export("e2")
    assert code == 3, out
    message = out["error"]["message"]
    assert "state.json" in message and "names audit record 3" in message and "cut off its end" in message, message
    assert "exported anyway" in message
    header = json.loads((tmp_path / "e2").read_bytes().splitlines()[0])
    assert header["lines"] == 2 and header["references"]["problem_count"] == 2
    assert {p["source"].rsplit(" ", 1)[1] for p in header["references"]["problems"]} == {"bundles.demo", "events[0]"}
    code, out = trail.verify_export("e2", "e1")
    assert code == 3, out
    assert "when it was exported" in out["error"]["message"] and "cut off its end" in out["error"]["message"]
    code, out = run_json("audit", "verify", "--log", trail.log)
    assert code == 3 and "cut off its end" in out["error"]["message"], out


def test_log_cut_and_written_again_after_a_downgrade_is_caught(site: Site, tmp_path: Path) -> None:
    """The cut lines are replaced by new records (a later verify): the sequence numbers exist again, but
    line 3 is not the record the state names."""
    trail = Trail(site, tmp_path)
    trail.downgrade_since_first_export()
    trail.cut_to(2)
    code, out = run_json("verify", site.next_bundle, "--trust", site.trust, "--audit-log", trail.log)
    assert code == 0, out
    code, out = trail.export("e2")
    assert code == 3 and "line 3 is another record" in out["error"]["message"], out
    code, out = trail.verify_export("e2", "e1")
    assert code == 3 and "line 3 is another record" in out["error"]["message"], out


def test_cut_record_of_a_new_version_is_caught_by_its_receipt(site: Site, tmp_path: Path, victim: Path) -> None:
    """A new version's install records cut: its receipt names the intent record."""
    trail = Trail(site, tmp_path)
    trail.install(victim)
    assert trail.export("e1")[0] == 0
    trail.install(site.next_bundle)
    trail.cut_to(2)
    code, out = run_json("audit", "verify", "--log", trail.log)
    assert code == 3, out
    assert "3.0.0/receipt.json names audit record 3" in out["error"]["message"], out
    assert out["error"]["subject"] == str(site.home / "3.0.0" / "receipt.json")
    assert trail.export("e2")[0] == 3
    assert trail.verify_export("e2", "e1")[0] == 3


def test_log_rebuilt_from_scratch_is_caught_with_the_prefix_option(site: Site, tmp_path: Path) -> None:
    """A log deleted and started again names no prefix; `--prefix` cross-checks one anyway."""
    trail = Trail(site, tmp_path)
    trail.install(site.next_bundle)
    trail.log.unlink()
    code, out = run_json("verify", site.next_bundle, "--trust", site.trust, "--audit-log", trail.log)
    assert code == 0, out
    assert run_json("audit", "verify", "--log", trail.log)[0] == 0  # the chain alone cannot tell
    code, out = run_json("audit", "verify", "--log", trail.log, "--prefix", site.prefix)
    assert code == 3 and "names audit record 1" in out["error"]["message"], out
    assert "line 1 is another record" in out["error"]["message"]


def test_intact_trail_cross_checks_and_travels_in_the_export(site: Site, tmp_path: Path) -> None:
    """Nothing cut: the log, the export and the export checked against the previous one all pass, and
    say how many references they checked."""
    trail = Trail(site, tmp_path)
    trail.downgrade_since_first_export()
    code, out = run_json("audit", "verify", "--log", trail.log)
    assert code == 0, out
    refs = out["references"]
    assert refs["prefixes"] == [str(site.prefix)] and refs["problems"] == []
    assert refs["checked"] == 3  # 3.0.0's receipt (line 1); the state's entry and the downgrade event (line 3)
    assert refs["highest"]["seq"] == 3
    code, out = trail.export("e2")
    assert code == 0, out
    assert out["references"]["checked"] == 3
    code, out = trail.verify_export("e2", "e1")
    assert code == 0, out
    assert out["references"]["highest"]["seq"] == 3
