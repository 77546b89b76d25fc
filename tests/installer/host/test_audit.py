"""The audit log: one hash-chained line per verify, install and refusal; signed exports (docs/safeguards.md)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gapship.installer.host.audit import GENESIS, AuditLog, line_hash, verify_log
from gapship_testing import run_json, tree
from safeguards_testing import build_bundle, isolated_host, log_lines, site_file  # noqa: F401

pytestmark = pytest.mark.usefixtures("isolated_host")


def write_log(path: Path, count: int) -> list[bytes]:
    log = AuditLog.open(path)
    for i in range(count):
        log.append({"command": "test", "decision": "accepted", "n": i})
    log.close()
    return path.read_bytes().splitlines(keepends=True)


def audit_verify(log: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    return run_json("audit", "verify", "--log", log)


# -- what is recorded ----------------------------------------------------------------------------


def test_every_command_appends_one_record(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    key = make_key("release")
    bundle, trust, log = build_bundle(tmp_path, key), make_trust(key), tmp_path / "audit.jsonl"
    site = site_file(tmp_path, "demo-site", "inference-audit-log")
    assert run_json("verify", bundle, "--trust", trust, "--audit-log", log, "--site-config", site)[0] == 0
    assert run_json("install", bundle, "--trust", trust, "--prefix", tmp_path / "p", "--audit-log", log,
                    "--site-config", site)[0] == 0
    code, refused = run_json("install", bundle, "--trust", trust, "--prefix", tmp_path / "q", "--audit-log", log,
                             "--site-config", site_file(tmp_path, "elsewhere"))
    assert code == 5
    lines = log_lines(log)
    # an install that makes a version visible records its intent first, then the outcome, which names it
    assert [(r["command"], r["decision"]) for r in lines] == [
        ("verify", "accepted"), ("install", "intent"), ("install", "accepted"), ("install", "refused")]
    first, intent, accepted, last = lines
    assert intent["install"]["prefix"] == str(tmp_path / "p") and intent["install"]["status"] == "installed"
    assert accepted["intent"] == {"seq": 2, "record": line_hash(json.dumps(intent, sort_keys=True,
                                                                              separators=(",", ":")).encode())}
    assert first["seq"] == 1 and first["prev"] == GENESIS
    assert first["bundle"] == {"name": "demo", "version": "1.0.0"}
    assert first["manifest_digest"].startswith("sha256:")
    assert first["signers"] == [key.keyid]
    assert first["site"] == "demo-site"
    assert first["who"]["uid"] == os.getuid() and first["who"]["host"]
    assert first["reason"] == {"code": 0, "kind": "ok", "message": "verify completed"}
    assert last["reason"]["code"] == 5 and last["reason"]["kind"] == "policy"
    assert last["reason"]["message"] == refused["error"]["message"]
    assert last["params"]["prefix"] == str(tmp_path / "q")
    code, out = audit_verify(log)
    assert code == 0, out
    assert out["lines"] == 4


def test_records_a_trust_refusal(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    key, stranger = make_key("release"), make_key("stranger")
    bundle, log = build_bundle(tmp_path, key), tmp_path / "audit.jsonl"
    code, _ = run_json("install", bundle, "--trust", make_trust(stranger), "--prefix", tmp_path / "p",
                       "--audit-log", log)
    assert code == 4
    [record] = log_lines(log)
    assert record["decision"] == "refused" and record["reason"]["kind"] == "trust"
    assert record["bundle"] is None and record["signers"] == []


def test_site_host_logs_to_the_default_log(tmp_path: Path, make_key, make_trust, isolated_host) -> None:  # type: ignore[no-untyped-def]
    key = make_key("release")
    code, out = run_json("verify", build_bundle(tmp_path, key), "--trust", make_trust(key),
                         "--site-config", site_file(tmp_path, "demo-site", "inference-audit-log"))
    assert code == 0, out
    assert [r["command"] for r in log_lines(isolated_host.default_log)] == ["verify"]


def test_host_without_site_file_writes_no_log(tmp_path: Path, make_key, make_trust, isolated_host) -> None:  # type: ignore[no-untyped-def]
    key = make_key("release")
    code, out = run_json("verify", build_bundle(tmp_path, key), "--trust", make_trust(key))
    assert code == 0, out
    assert not isolated_host.default_log.exists()


def test_unwritable_audit_log_stops_install(tmp_path: Path, make_key, make_trust) -> None:  # type: ignore[no-untyped-def]
    key = make_key("release")
    log = tmp_path / "log-is-a-dir"
    log.mkdir()
    prefix = tmp_path / "prefix"
    code, out = run_json("install", build_bundle(tmp_path, key), "--trust", make_trust(key), "--prefix", prefix,
                         "--audit-log", log)
    assert code == 7
    assert "cannot open the audit log" in out["error"]["message"]
    assert tree(prefix) == {}


def test_refuses_to_append_after_an_incomplete_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 2)
    with log.open("ab") as f:
        f.write(b'{"half": ')
    code, out = run_json("audit", "verify", "--log", log)
    assert code == 3 and "line 3 is incomplete" in out["error"]["message"]
    with pytest.raises(Exception, match="ends in an incomplete line"):
        AuditLog.open(log).append({"command": "test"})


def _append_many(path: Path, count: int) -> None:
    log = AuditLog.open(path)
    for i in range(count):
        log.append({"command": "test", "pid": os.getpid(), "i": i, "pad": "x" * 3000})
    log.close()


def test_concurrent_appends_keep_the_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(log, 25)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        assert w.exitcode == 0
    summary = verify_log(log)
    assert summary.lines == 100


# -- tampering --------------------------------------------------------------------------------------


def test_detects_an_edited_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log, 5)
    record = json.loads(lines[1])
    record["decision"] = "refused"
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    log.write_bytes(b"".join(lines))
    code, out = audit_verify(log)
    assert code == 3
    assert "line 2 was changed (line 3 records another hash for it)" in out["error"]["message"]


def test_detects_a_hand_edit(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log, 3)
    lines[2] = lines[2].replace(b'"decision":"accepted"', b'"decision": "refused"')
    log.write_bytes(b"".join(lines))
    code, out = audit_verify(log)
    assert code == 3
    assert "line 3 is not a canonical JSON record" in out["error"]["message"]


def test_detects_a_deleted_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log, 5)
    log.write_bytes(b"".join(lines[:2] + lines[3:]))
    code, out = audit_verify(log)
    assert code == 3
    assert "line 3 carries sequence number 4: a line before it was deleted" in out["error"]["message"]


def test_detects_a_deleted_first_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log, 3)
    log.write_bytes(b"".join(lines[1:]))
    code, out = audit_verify(log)
    assert code == 3
    assert "line 1 carries sequence number 2" in out["error"]["message"]


def test_detects_reordered_lines(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log, 5)
    lines[2], lines[3] = lines[3], lines[2]
    log.write_bytes(b"".join(lines))
    code, out = audit_verify(log)
    assert code == 3
    assert "line 3 carries sequence number 4" in out["error"]["message"]


def test_chain_is_sha256_of_the_previous_line(tmp_path: Path) -> None:
    lines = write_log(tmp_path / "audit.jsonl", 2)
    assert json.loads(lines[1])["prev"] == line_hash(lines[0].rstrip(b"\n"))


# -- exports -----------------------------------------------------------------------------------------


def export(tmp_path: Path, log: Path, name: str = "export.jsonl") -> tuple[Path, Path]:
    key = tmp_path / "hostkeys" / "host.key"
    code, out = run_json("audit", "export", "--log", log, "--out", tmp_path / name, "--host-key", key)
    assert code == 0, out
    return tmp_path / name, Path(out["pubkey"])


def test_exported_log_verifies_elsewhere_with_only_the_public_key(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 4)
    exported, pub = export(tmp_path, log)
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    shutil.copy(exported, vendor / "site.export")
    shutil.copy(pub, vendor / "host.pub")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(vendor), "LANG": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-m", "gapship.installer", "audit", "verify", "--export", "site.export",
                           "--pubkey", "host.pub", "--json"], cwd=vendor, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    out = json.loads(done.stdout)
    assert out["lines"] == 4
    assert out["head"] == line_hash(log.read_bytes().splitlines()[-1])


def test_rejects_export_with_an_edited_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 4)
    exported, pub = export(tmp_path, log)
    lines = exported.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"n":1', b'"n":7')
    exported.write_bytes(b"".join(lines))
    code, out = run_json("audit", "verify", "--export", exported, "--pubkey", pub)
    assert code == 3
    assert "(exported log): line 2 was changed" in out["error"]["message"]


def test_rejects_export_with_lines_cut_off(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 4)
    exported, pub = export(tmp_path, log)
    exported.write_bytes(b"".join(exported.read_bytes().splitlines(keepends=True)[:-1]))
    code, out = run_json("audit", "verify", "--export", exported, "--pubkey", pub)
    assert code == 3
    assert "do not match the signed header" in out["error"]["message"]


def test_rejects_export_checked_with_another_key(tmp_path: Path, make_key) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "audit.jsonl"
    write_log(log, 2)
    exported, _ = export(tmp_path, log)
    code, out = run_json("audit", "verify", "--export", exported, "--pubkey", make_key("other").public)
    assert code == 4
    assert "not by the given key" in out["error"]["message"]


def test_rejects_export_with_a_forged_header(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 2)
    exported, pub = export(tmp_path, log)
    exported.write_bytes(exported.read_bytes().replace(b'"lines":2', b'"lines":1', 1))
    code, out = run_json("audit", "verify", "--export", exported, "--pubkey", pub)
    assert code == 4
    assert "does not verify" in out["error"]["message"]


def test_refuses_to_export_a_broken_log(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = write_log(log, 3)
    log.write_bytes(b"".join(lines[:1] + lines[2:]))
    code, out = run_json("audit", "export", "--log", log, "--out", tmp_path / "x", "--host-key", tmp_path / "h.key")
    assert code == 3
    assert not (tmp_path / "x").exists()


def test_host_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 1)
    _, pub = export(tmp_path, log, "one")
    key = tmp_path / "hostkeys" / "host.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes(), pub.read_bytes()
    _, pub2 = export(tmp_path, log, "two")
    assert (key.read_bytes(), pub2.read_bytes()) == before


def test_rejects_host_key_readable_by_others(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 1)
    export(tmp_path, log, "one")
    key = tmp_path / "hostkeys" / "host.key"
    key.chmod(0o644)
    code, out = run_json("audit", "export", "--log", log, "--out", tmp_path / "two", "--host-key", key)
    assert code == 7
    assert "mode 0600" in out["error"]["message"]


def append(log: Path, count: int) -> None:
    opened = AuditLog.open(log)
    for i in range(count):
        opened.append({"command": "later", "n": i})
    opened.close()


def test_later_export_extends_the_previous_one(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 3)
    first, pub = export(tmp_path, log, "first")
    append(log, 2)
    second, _ = export(tmp_path, log, "second")
    code, out = run_json("audit", "verify", "--export", second, "--pubkey", pub, "--previous", first)
    assert code == 0, out
    assert out["lines"] == 5


def test_rejects_export_after_lines_were_cut_off_the_end(tmp_path: Path) -> None:
    """Cutting the last lines leaves a valid chain; the previous export is what catches it."""
    log = tmp_path / "audit.jsonl"
    lines = write_log(log, 4)
    first, pub = export(tmp_path, log, "first")
    log.write_bytes(b"".join(lines[:2]))
    assert audit_verify(log)[0] == 0
    second, _ = export(tmp_path, log, "second")
    code, out = run_json("audit", "verify", "--export", second, "--pubkey", pub, "--previous", first)
    assert code == 3
    assert "fewer than the 4 of the previous export" in out["error"]["message"]


def test_rejects_export_of_a_rewritten_log(tmp_path: Path) -> None:
    """Root can rebuild a whole consistent chain; it cannot make it extend what was exported before."""
    log = tmp_path / "audit.jsonl"
    write_log(log, 3)
    first, pub = export(tmp_path, log, "first")
    log.unlink()
    write_log(log, 1)
    append(log, 4)
    second, _ = export(tmp_path, log, "second")
    code, out = run_json("audit", "verify", "--export", second, "--pubkey", pub, "--previous", first)
    assert code == 3
    assert "does not extend the previous export" in out["error"]["message"]
