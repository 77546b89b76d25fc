"""The transparency log (installer/host/tlog.py, docs/audit.md): the node store matches the RFC 6962
tree of the records file, group commit, crash and full-disk faults, two appenders, the installer's
records in the same log, bad records refused on their own line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gapship.installer.crypto import merkle
from gapship.installer.errors import HostError
from gapship.installer.host.audit import AuditLog, verify_log
from gapship.installer.host.tlog import (
    BadRecord, GroupCommit, TransparencyLog, append_stream, inference_record, parse_record,
)

GAPSHIP = [sys.executable, "-c", "from gapship.bundler.cli.main import main; main()"]


def tree_of(path: Path) -> merkle.NodeSource:
    """The RFC 6962 tree of the file's lines, computed from nothing but the file."""
    lines = path.read_bytes().split(b"\n")[:-1]
    return merkle.memory_source([merkle.leaf_hash(line) for line in lines])


def assert_consistent(path: Path) -> int:
    """The node store, the records file and the hash chain all agree; return the number of records."""
    summary = verify_log(path)
    with TransparencyLog.open(path) as log:
        assert log.size == summary.lines
        ref = tree_of(path)
        assert log.root() == merkle.root(ref, log.size)
        for i in {0, log.size // 2, log.size - 1} if log.size else set():
            proof = log.inclusion_proof(i)
            merkle.verify_inclusion(merkle.leaf_hash(log.leaf_line(i)), i, log.size, proof, log.root())
    return summary.lines


def test_node_store_is_the_rfc6962_tree_of_the_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with TransparencyLog.open(path) as log:
        for b in range(1, 40):
            log.append([{"n": i, "batch": b} for i in range(b % 7 + 1)])
        ref = tree_of(path)
        for size in range(1, log.size + 1):
            assert log.root(size) == merkle.root(ref, size)
        for old in (1, 5, 64, log.size - 1):
            merkle.verify_consistency(old, log.size, log.root(old), log.root(), log.consistency_proof(old))
    assert_consistent(path)


def test_inference_record_holds_hashes_not_contents(tmp_path: Path) -> None:
    record = inference_record(bundle="demo", version="1.0.0", manifest_digest="sha256:" + "a" * 64, model="tiny",
                              site="s", request_id="r1", caller="svc", outcome="served", safeguards=["f"],
                              prompt="secret prompt", response=b"secret answer")
    with TransparencyLog.open(tmp_path / "log") as log:
        log.append([record])
        line = log.leaf_line(0)
    assert b"secret" not in line
    assert json.loads(line)["prompt_sha256"].startswith("sha256:")


def test_installer_records_and_appends_share_one_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with TransparencyLog.open(path) as log:
        log.append([{"kind": "inference", "request_id": "a"}])
        installer = AuditLog.open(path)
        installer.append({"command": "install", "decision": "accepted"})  # the installer's own writer
        installer.close()
        log.append([{"kind": "inference", "request_id": "b"}])
        assert log.size == 3
    assert assert_consistent(path) == 3


def test_existing_chain_log_is_migrated_on_first_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = AuditLog.open(path)
    for i in range(300):
        old.append({"command": "verify", "i": i})
    old.close()
    assert not (tmp_path / "audit.jsonl.tree").exists()
    with TransparencyLog.open(path) as log:
        assert log.size == 300 and log.recovery.adopted_lines == 300
        log.append([{"kind": "inference"}])
    assert assert_consistent(path) == 301


@pytest.mark.parametrize("bad", [b"[1, 2]", b"\"text\"", b"null", b"not json", b"{\"seq\": 3}", b"{\"prev\": 1}",
                                 b"[" * 40 + b"]" * 40, b"{\"a\":" * 40 + b"1" + b"}" * 40, b"\xff\xfe",
                                 b"{\"a\": \"" + b"x" * 70_000 + b"\"}"])
def test_rejects_bad_record(bad: bytes) -> None:
    with pytest.raises(BadRecord):
        parse_record(bad)


def test_brackets_inside_strings_are_not_nesting() -> None:
    assert parse_record(json.dumps({"text": "[" * 100}).encode()) == {"text": "[" * 100}


def _feed(data: bytes) -> int:
    """The read end of a pipe that a thread fills with ``data`` and closes."""
    r, w = os.pipe()

    def write() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(data)

    threading.Thread(target=write, daemon=True).start()
    return r


def test_bad_records_are_refused_on_their_own_line_and_the_stream_goes_on(tmp_path: Path) -> None:
    r = _feed(b'{"a": 1}\n[1]\n{"a": 2}\n{oops\n\n' + b"{\"big\": \"" + b"x" * 70_000 + b"\"}\n" + b'{"a": 3}')
    refused: list[tuple[int, str]] = []
    with TransparencyLog.open(tmp_path / "log") as log:
        summary = append_stream(log, r, on_refused=lambda n, why: refused.append((n, why)))
        assert [json.loads(log.leaf_line(i))["a"] for i in range(log.size)] == [1, 2, 3]
    os.close(r)
    assert [n for n, _ in refused] == [2, 4, 5, 6]
    assert summary.appended == 3 and summary.refused == 4


def test_group_commit_batches_many_records_per_sync(tmp_path: Path) -> None:
    r = _feed(b"".join(b'{"i": %d}\n' % i for i in range(5000)))
    commits = []
    with TransparencyLog.open(tmp_path / "log") as log:
        summary = append_stream(log, r, max_batch=1000, max_delay=60, on_commit=commits.append)
    os.close(r)
    assert summary.appended == 5000 and summary.batches == len(commits) == 5
    assert [c.first for c in commits] == [0, 1000, 2000, 3000, 4000]


def test_latency_bound_commits_a_waiting_record_without_more_input(tmp_path: Path) -> None:
    r, w = os.pipe()
    acked = threading.Event()
    with TransparencyLog.open(tmp_path / "log") as log:
        t = threading.Thread(target=append_stream, args=(log, r),
                             kwargs={"max_batch": 1000, "max_delay": 0.05, "on_commit": lambda c: acked.set()})
        t.start()
        os.write(w, b'{"i": 1}\n')
        assert acked.wait(30)  # acknowledged while the input stays open
        os.close(w)
        t.join()
    os.close(r)


def test_group_commit_from_many_threads(tmp_path: Path) -> None:
    with TransparencyLog.open(tmp_path / "log") as log:
        front = GroupCommit(log, max_batch=64, max_delay=0.002)
        seen: list[int] = []
        lock = threading.Lock()

        def serve(k: int) -> None:
            for i in range(100):
                index = front.append({"thread": k, "i": i})
                with lock:
                    seen.append(index)

        threads = [threading.Thread(target=serve, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        front.close()
        assert sorted(seen) == list(range(800))
    assert assert_consistent(tmp_path / "log") == 800


def test_torn_tail_is_cut_off_on_open(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with TransparencyLog.open(path) as log:
        log.append([{"i": i} for i in range(10)])
    with open(path, "ab") as f:
        f.write(b'{"audit_version":1,"i":10,"prev":"sha256:00')  # a write cut short
    with TransparencyLog.open(path) as log:
        assert log.size == 10 and log.recovery.torn_bytes > 0
        log.append([{"i": 10}])
    assert assert_consistent(path) == 11


def test_node_store_ahead_of_or_behind_the_records_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with TransparencyLog.open(path) as log:
        log.append([{"i": i} for i in range(100)])
    good = path.read_bytes()
    with TransparencyLog.open(path) as log:
        log.append([{"i": i} for i in range(100, 150)])
    path.write_bytes(good)  # killed after the store was written, before the records were
    assert assert_consistent(path) == 100
    level1 = tmp_path / "log.tree" / "level-01"
    level1.write_bytes(level1.read_bytes()[:-96])  # killed half-way through the store's levels
    assert assert_consistent(path) == 100
    shutil.rmtree(tmp_path / "log.tree")  # lost altogether: rebuilt from the records
    assert assert_consistent(path) == 100


def _appender(log: Path, n: int, tag: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*GAPSHIP, "audit", "append", "--log", str(log), *extra], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_appenders_at_once_are_serialised(tmp_path: Path) -> None:
    path = tmp_path / "log"
    procs = [_appender(path, 3000, tag, "--max-batch", "100") for tag in "ab"]
    feeds = [threading.Thread(target=p.communicate,
                              args=(b"".join(b'{"who": "%s", "i": %d}\n' % (tag.encode(), i) for i in range(3000)),))
             for p, tag in zip(procs, "ab")]
    for t in feeds:
        t.start()
    for t in feeds:
        t.join()
    assert [p.returncode for p in procs] == [0, 0]
    assert assert_consistent(path) == 6000
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    for tag in "ab":
        assert [r["i"] for r in lines if r["who"] == tag] == list(range(3000))


def test_sigkill_during_append_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    path = tmp_path / "log"
    proc = _appender(path, 0, "k", "--ack", "--max-batch", "50", "--max-delay", "1")
    assert proc.stdin is not None and proc.stdout is not None
    acked = 0
    i = 0
    deadline = time.monotonic() + 60
    while acked < 500 and time.monotonic() < deadline:
        proc.stdin.write(b"".join(b'{"i": %d}\n' % j for j in range(i, i + 50)))
        proc.stdin.flush()
        i += 50
        line = proc.stdout.readline().split()
        acked = int(line[2])
    proc.stdin.write(b"".join(b'{"i": %d, "pad": "%s"}\n' % (j, b"x" * 500) for j in range(i, i + 2000)))
    proc.stdin.flush()
    proc.send_signal(signal.SIGKILL)  # mid-stream: some batches written, perhaps one half-way
    proc.wait()
    assert acked >= 500
    n = assert_consistent(path)  # never unreadable; the torn tail, if any, is cut off
    assert n >= acked
    assert [json.loads(line)["i"] for line in path.read_bytes().splitlines()] == list(range(n))


def test_full_disk_refuses_the_append_with_exit_7_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path = mnt / "log"
        with TransparencyLog.open(path) as log:
            log.append([{"i": i} for i in range(100)])
            before = path.read_bytes()
            with pytest.raises(HostError, match="disk is full"):
                for b in range(1000):
                    log.append([{"i": i, "pad": "x" * 200} for i in range(100)])
            kept = log.size
        assert path.read_bytes().startswith(before)
        assert assert_consistent(path) == kept
        done = subprocess.run([*GAPSHIP, "audit", "append", "--log", str(path)], input=b'{"pad": "%s"}\n' % (b"y" * 60000),
                              capture_output=True)
        assert done.returncode == 7, done.stderr
        assert b"disk is full" in done.stderr
        assert assert_consistent(path) == kept
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
