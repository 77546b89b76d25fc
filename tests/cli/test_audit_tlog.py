"""``gapship audit append``, ``checkpoint``, ``export --since`` and ``verify --export --since``
(docs/audit.md; docs/cli.md 13.1, 13.2, 13.4, 13.5): the vendor's check, with only the public key and
the last accepted checkpoint, refuses a truncation, a rewrite and a fork, naming what does not fit."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gapship.bundler.cli.main import cli
from gapship_testing import run

GAPSHIP = [sys.executable, "-c", "from gapship.bundler.cli.main import main; main()"]


def append(log: Path, records: list[dict[str, object]], *extra: str) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    done = CliRunner().invoke(cli, ["audit", "append", "--log", str(log), *extra], input=text,
                              catch_exceptions=False)
    assert done.exit_code == 0, done.output


def records(start: int, n: int) -> list[dict[str, object]]:
    return [{"kind": "inference", "request_id": f"r{i}", "outcome": "served"} for i in range(start, start + n)]


class Site:
    """A host with a log, its key, and the vendor's folder holding only what crosses the gap."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "host" / "audit.jsonl"
        self.key = tmp_path / "host" / "host.key"
        self.vendor = tmp_path / "vendor"
        self.vendor.mkdir(parents=True)
        self.n = 0

    def add(self, n: int) -> None:
        append(self.log, records(self.n, n))
        self.n += n

    def checkpoint(self, name: str) -> Path:
        out = self.vendor / name
        done = run("audit", "checkpoint", "--log", self.log, "--out", out, "--host-key", self.key)
        assert done.exit_code == 0, done.output
        return out

    def export(self, since: Path, name: str, log: Path | None = None) -> Path:
        out = self.vendor / name
        done = run("audit", "export", "--log", log or self.log, "--since", since, "--out", out, "--host-key", self.key)
        assert done.exit_code == 0, done.output
        return out

    def verify(self, export: Path, since: Path, *extra: str | Path) -> tuple[int, str]:
        done = run("audit", "verify", "--export", export, "--pubkey", self.key.with_suffix(".pub"), "--since", since,
                   *extra)
        return done.exit_code, done.output


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = Site(tmp_path)
    s.add(10)
    return s


def test_export_since_a_checkpoint_verifies_and_chains_on(site: Site) -> None:
    cp1 = site.checkpoint("cp1")
    site.add(25)
    site.checkpoint("mid")  # signed in between: carried in the export, checked against the records
    site.add(5)
    exp = site.export(cp1, "exp1")
    code, out = site.verify(exp, cp1, "--save-checkpoint", site.vendor / "cp2")
    assert code == 0, out
    assert "records 11..40 (30) hash to the signed root, and to the 1 checkpoint(s) between" in out
    site.add(7)
    exp2 = site.export(site.vendor / "cp2", "exp2")
    code, out = site.verify(exp2, site.vendor / "cp2")
    assert code == 0, out
    with gzip.open(exp2, "rb") as f:
        assert len(f.read().splitlines()) == 1 + 7  # the header, then only the new records


def test_rejects_truncated_log(site: Site) -> None:
    site.add(20)
    cp = site.checkpoint("cp")
    lines = site.log.read_bytes().splitlines(keepends=True)
    site.log.write_bytes(b"".join(lines[:15]))  # root on the host cuts the log back
    shutil.rmtree(site.log.with_name("audit.jsonl.tree"))
    site.add(3)
    # the host itself refuses to export from a checkpoint its log contradicts ...
    done = run("audit", "export", "--log", site.log, "--since", cp, "--out", site.vendor / "x", "--host-key", site.key)
    assert done.exit_code == 3 and "the log was cut after that checkpoint" in done.output
    # ... and a host that lies about its old checkpoint is caught by the vendor
    fresh = site.checkpoint("fresh")
    code, out = site.verify(site.export(fresh, "exp"), cp)
    assert code == 3
    assert "fewer than the 30 of the accepted checkpoint" in out and "truncated" in out


def test_rejects_rewritten_record_before_the_checkpoint(site: Site) -> None:
    cp = site.checkpoint("cp")
    _rewrite(site.log, 4, {"outcome": "refused"})  # record 4 edited, the chain and the tree rebuilt by root
    site.add(5)
    assert run("audit", "verify", "--log", site.log).exit_code == 0  # the chain alone cannot tell
    done = run("audit", "export", "--log", site.log, "--since", cp, "--out", site.vendor / "x", "--host-key", site.key)
    assert done.exit_code == 3 and "rewritten after that checkpoint" in done.output  # an honest gapship refuses
    code, out = site.verify(_lying_export(site.log, site.key, cp, site.vendor / "exp"), cp)  # a lying one is caught
    assert code == 3
    assert "not consistent with the accepted checkpoint" in out and "rewritten or forked before record 11" in out


def test_rejects_fork_with_another_history(tmp_path: Path) -> None:
    a = Site(tmp_path / "a")
    a.add(10)
    cp = a.checkpoint("cp")  # the vendor accepted 10 records of history a
    b = Site(tmp_path / "b")  # the same host key and origin, another history
    b.vendor, b.key = a.vendor, a.key
    b.log.parent.mkdir(parents=True)
    append(b.log, records(100, 15))
    code, out = a.verify(_lying_export(b.log, b.key, cp, a.vendor / "exp-fork"), cp)
    assert code == 3 and "rewritten or forked" in out
    start = b.checkpoint("b-start")  # an export of the fork from its own checkpoint does not fit either
    code, out = a.verify(b.export(start, "exp"), cp)
    assert code == 3 and "exported since another checkpoint" in out


def test_rejects_record_changed_in_the_export(site: Site) -> None:
    cp = site.checkpoint("cp")
    site.add(30)
    exp = site.export(cp, "exp")
    with gzip.open(exp, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    lines[5] = lines[5].replace(b'"served"', b'"refused"')  # record 15 (line 0 is the header)
    with gzip.open(exp, "wb") as f:
        f.write(b"".join(lines))
    code, out = site.verify(exp, cp)
    assert code == 3
    assert "record 15 was changed" in out


def test_rejects_export_cut_short(site: Site) -> None:
    cp = site.checkpoint("cp")
    site.add(30)
    exp = site.export(cp, "exp")
    with gzip.open(exp, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with gzip.open(exp, "wb") as f:
        f.write(b"".join(lines[:-4]))
    code, out = site.verify(exp, cp)
    assert code == 3
    assert "record 37 on was cut off" in out


def test_rejects_export_signed_by_another_key(site: Site, tmp_path: Path) -> None:
    cp = site.checkpoint("cp")
    site.add(3)
    exp = site.export(cp, "exp")
    other = tmp_path / "other.key"
    run("audit", "checkpoint", "--log", site.log, "--out", tmp_path / "o", "--host-key", other)
    done = run("audit", "verify", "--export", exp, "--pubkey", other.with_suffix(".pub"), "--since", cp)
    assert done.exit_code == 4


def test_vendor_verifies_with_the_network_cut_and_only_the_public_key(site: Site, tmp_path: Path) -> None:
    cp = site.checkpoint("cp")
    site.add(12)
    exp = site.export(cp, "exp")
    vendor = tmp_path / "air"
    vendor.mkdir()
    for f in (exp, cp, site.key.with_suffix(".pub")):
        shutil.copy(f, vendor / f.name)
    shutil.rmtree(site.log.parent)  # nothing of the host is left but what crossed
    argv = [*GAPSHIP, "audit", "verify", "--export", "exp", "--pubkey", "host.pub", "--since", "cp", "--json"]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        argv = ["unshare", "-rn", *argv]  # a network namespace with no interface but a down loopback
    else:
        pytest.skip("unshare -rn is not available here")
    done = subprocess.run(argv, cwd=vendor, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] and result["records"] == 12 and result["since_size"] == 10


def test_append_refuses_bad_lines_and_keeps_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "log"
    done = subprocess.run([*GAPSHIP, "audit", "append", "--log", str(log), "--ack", "--json"],
                          input=b'{"a": 1}\n[2]\n{"a": 3}\n', capture_output=True)
    assert done.returncode == 2
    assert b"stdin line 2 refused: it is a JSON list, not an object" in done.stderr
    out = done.stdout.decode().splitlines()
    assert out[0] == "ack 1 2"
    error = json.loads(out[-1])
    assert error["ok"] is False and error["error"]["subject"] == "stdin line 2"
    assert len(log.read_bytes().splitlines()) == 2


def test_append_help_and_bad_options_go_through_click(tmp_path: Path) -> None:
    done = subprocess.run([*GAPSHIP, "audit", "append", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--max-delay" in done.stdout
    done = subprocess.run([*GAPSHIP, "audit", "append", "--max-batch", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and "--max-batch" in done.stderr


def test_append_starts_without_click_or_signing_libraries(tmp_path: Path) -> None:
    probe = ("import sys, json, atexit\n"
             "atexit.register(lambda: open('mods.json', 'w').write(json.dumps(sorted(sys.modules))))\n"
             "from gapship.bundler.cli.main import main\nsys.argv = ['gapship', 'audit', 'append', '--log', 'l']\nmain()\n")
    done = subprocess.run([sys.executable, "-c", probe], input=b'{"a": 1}\n', cwd=tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr
    modules = set(json.loads((tmp_path / "mods.json").read_text()))
    assert not modules & {"click", "nacl", "nacl.signing", "cryptography", "gapship.installer.trust"}


def test_checkpoint_with_ml_dsa_87_beside_ed25519(tmp_path: Path) -> None:
    log = tmp_path / "log"
    append(log, records(0, 4))
    done = run("audit", "checkpoint", "--log", log, "--out", tmp_path / "cp", "--host-key", tmp_path / "k" / "ed.key",
               "--pq-host-key", tmp_path / "k" / "pq.key", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["algorithms"] == ["ed25519", "ml-dsa-87"]
    assert oct((tmp_path / "k" / "pq.key").stat().st_mode & 0o777) == "0o600"
    append(log, records(4, 3))
    done = run("audit", "export", "--log", log, "--since", tmp_path / "cp", "--out", tmp_path / "exp",
               "--host-key", tmp_path / "k" / "ed.key", "--pq-host-key", tmp_path / "k" / "pq.key")
    assert done.exit_code == 0, done.output
    for pub in ("ed.pub", "pq.pub"):  # either public key alone is enough
        done = run("audit", "verify", "--export", tmp_path / "exp", "--pubkey", tmp_path / "k" / pub, "--since",
                   tmp_path / "cp")
        assert done.exit_code == 0, done.output


def test_legacy_export_and_verify_still_work_on_a_transparency_log(tmp_path: Path) -> None:
    log = tmp_path / "log"
    append(log, records(0, 5))
    assert run("audit", "verify", "--log", log).exit_code == 0
    done = run("audit", "export", "--log", log, "--out", tmp_path / "full", "--host-key", tmp_path / "k.key")
    assert done.exit_code == 0, done.output
    assert run("audit", "verify", "--export", tmp_path / "full", "--pubkey", tmp_path / "k.pub").exit_code == 0


def test_a_tlog_export_without_since_is_named_as_such(site: Site) -> None:
    cp = site.checkpoint("cp")
    exp = site.export(cp, "exp")
    done = run("audit", "verify", "--export", exp, "--pubkey", site.key.with_suffix(".pub"))
    assert done.exit_code == 2 and "--since" in done.output


def _rewrite(log: Path, seq: int, change: dict[str, object]) -> None:
    """What root can do: edit a record and rebuild the chain after it, so `audit verify --log` passes."""
    import hashlib

    from gapship.installer.kit import canonical_json

    lines = [json.loads(line) for line in log.read_bytes().splitlines()]
    prev = "sha256:" + "0" * 64
    out = []
    for record in lines:
        if record["seq"] == seq:
            record.update(change)
        record["prev"] = prev
        line = canonical_json(record)
        prev = "sha256:" + hashlib.sha256(line).hexdigest()
        out.append(line + b"\n")
    log.write_bytes(b"".join(out))
    shutil.rmtree(log.with_name(log.name + ".tree") / "checkpoints", ignore_errors=True)
    os.unlink(log.with_name(log.name + ".tree") / "index")  # the store is rebuilt from the rewritten lines


def _lying_export(log: Path, key: Path, claimed: Path, out: Path) -> Path:
    """What root can make with the host key: an export that claims to start from the vendor's
    checkpoint, from a log that does not extend it (the library, without the host's own check)."""
    from gapship.installer.cli.audit_tlog import signers
    from gapship.installer.formats.note import Checkpoint
    from gapship.installer.host.tlog import TransparencyLog
    from gapship.installer.host.tlog_export import export_since

    data = claimed.read_bytes()
    since = Checkpoint.from_text(data[:data.index(b"\n\n") + 1].decode(), source="claimed")
    with TransparencyLog.open(log) as tlog:
        keys, _ = signers(tlog, key, None)
        export_since(tlog, since, out, signers=keys, host="h", exported_at="now")
    return out


def test_rejects_fifo_in_place_of_the_export(site: Site, tmp_path: Path) -> None:
    cp = site.checkpoint("cp")
    fifo = tmp_path / "exp"
    os.mkfifo(fifo)
    done = run("audit", "verify", "--export", fifo, "--pubkey", site.key.with_suffix(".pub"), "--since", cp)
    assert done.exit_code == 2 and "FIFO" in done.output


def test_append_signs_a_checkpoint_every_n_records(tmp_path: Path) -> None:
    log = tmp_path / "log"
    text = "".join(json.dumps(r) + "\n" for r in records(0, 250))
    done = CliRunner().invoke(cli, ["audit", "append", "--log", str(log), "--max-batch", "50", "--checkpoint-every",
                                    "100", "--host-key", str(tmp_path / "k.key"), "--json"], input=text,
                              catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.splitlines()[-1])["checkpoints"] == 2
    kept = sorted(p.name for p in (tmp_path / "log.tree" / "checkpoints").iterdir())
    assert kept == ["0000000000000100.note", "0000000000000200.note"]


def test_checkpoint_is_signed_with_ml_dsa_87_when_the_trust_root_requires_it(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from gapship.installer.cli import audit_tlog

    keys = tmp_path / "keys"
    for name, algorithm in (("root", "ed25519"), ("rel", "ed25519"), ("rel-pq", "ml-dsa-87")):
        assert run("keygen", name, "--out-dir", keys, "--algorithm", algorithm).exit_code == 0
    trust = tmp_path / "trust"
    done = run("trust", "init", "--dir", trust, "--root-key", keys / "root.pub", "--release-key", keys / "rel.pub",
               "--release-key", keys / "rel-pq.pub", "--require-algorithms", "release=ed25519,ml-dsa-87",
               "--expires", "30d", "--sign-with", keys / "root.key")
    assert done.exit_code == 0, done.output
    log = tmp_path / "log"
    append(log, records(0, 3))
    pq = tmp_path / "host" / "pq.key"
    monkeypatch.setattr(audit_tlog, "DEFAULT_PQ_HOST_KEY", pq)  # the default key, made at first use
    done = run("audit", "checkpoint", "--log", log, "--out", tmp_path / "cp", "--host-key", tmp_path / "host" / "h.key",
               "--trust", trust, "--json")
    assert done.exit_code == 0 and json.loads(done.stdout)["algorithms"] == ["ed25519", "ml-dsa-87"]
    assert pq.is_file()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(keys / "rel.pub", legacy)
    done = run("audit", "checkpoint", "--log", log, "--out", tmp_path / "cp2", "--host-key", tmp_path / "host" / "h.key",
               "--trust", legacy, "--json")
    assert done.exit_code == 0 and json.loads(done.stdout)["algorithms"] == ["ed25519"]


# -- the host checks the node store before it signs a checkpoint (docs/audit.md, "Checkpoints") ----------


def _true_root(log: Path) -> bytes:
    """The RFC 6962 root of the records file's lines, from nothing but the file."""
    from gapship.installer.crypto import merkle

    lines = log.read_bytes().split(b"\n")[:-1]
    return merkle.root(merkle.memory_source([merkle.leaf_hash(line) for line in lines]), len(lines))


def _signed(site: Site, note: Path) -> tuple[int, bytes]:
    from gapship.installer.crypto.keys import PublicKey
    from gapship.installer.formats.note import open_checkpoint
    from gapship.installer.host.tlog import TransparencyLog

    pub = PublicKey.from_pem(site.key.with_suffix(".pub").read_bytes(), source="host.pub")
    with TransparencyLog.open(site.log) as t:
        origin = t.origin
    cp = open_checkpoint(note.read_bytes(), [(origin, pub)], source=str(note), origin=origin)
    return cp.size, cp.root


def _flip(path: Path, node: int) -> None:
    with open(path, "r+b") as f:
        f.seek(node * 32 + 7)
        byte = f.read(1)
        f.seek(node * 32 + 7)
        f.write(bytes([byte[0] ^ 0x20]))


def _refused(site: Site, name: str, *named: str) -> None:
    """``audit checkpoint`` exits 3 with one line naming the damage; nothing signed, the log untouched;
    after the documented repair (--rebuild-store) it signs the records' true root."""
    before = site.log.read_bytes()
    kept = sorted((site.log.parent / "audit.jsonl.tree" / "checkpoints").glob("*.note"))
    out = site.vendor / name
    done = run("audit", "checkpoint", "--log", site.log, "--out", out, "--host-key", site.key)
    assert done.exit_code == 3, done.output
    error = [line for line in done.output.splitlines() if line.startswith("gapship: error:")]
    assert len(error) == 1 and "nothing signed" in error[0], done.output
    for what in named:
        assert what in error[0], done.output
    assert "--rebuild-store" in done.output
    assert not out.exists()
    assert sorted((site.log.parent / "audit.jsonl.tree" / "checkpoints").glob("*.note")) == kept
    assert site.log.read_bytes() == before
    done = run("audit", "checkpoint", "--log", site.log, "--out", out, "--host-key", site.key, "--rebuild-store")
    assert done.exit_code == 0, done.output
    assert "rebuilt the node store" in done.output
    assert _signed(site, out) == (site.n, _true_root(site.log))
    assert site.log.read_bytes() == before


@pytest.fixture
def signed_site(site: Site) -> Site:
    """40 records under a checkpoint this host signed, 30 more after it."""
    site.add(30)
    site.checkpoint("cp1")
    site.add(30)
    return site


def test_rejects_flipped_byte_in_level_0(signed_site: Site) -> None:
    _flip(signed_site.log.with_name("audit.jsonl.tree") / "level-00", 50)
    _refused(signed_site, "cp2", "leaf 50 in level-00")


def test_rejects_flipped_byte_in_an_upper_level(signed_site: Site) -> None:
    _flip(signed_site.log.with_name("audit.jsonl.tree") / "level-02", 13)  # leaves 52..55
    _refused(signed_site, "cp2", "node 13 of level-02")


def test_rejects_flipped_node_under_the_signed_checkpoint(signed_site: Site) -> None:
    # node 0 of level 05 (leaves 0..31) is in the root of the 70-record tree: the consistency proof
    # from the store fails, and the whole-tree check then names the node
    _flip(signed_site.log.with_name("audit.jsonl.tree") / "level-05", 0)
    _refused(signed_site, "cp2", "node 0 of level-05")


def test_rejects_flipped_leaf_on_the_first_checkpoint(site: Site) -> None:
    site.add(20)
    _flip(site.log.with_name("audit.jsonl.tree") / "level-00", 3)  # no earlier checkpoint: the whole tree
    _refused(site, "cp1", "leaf 3 in level-00")


def test_rejects_store_of_another_log(signed_site: Site, tmp_path: Path) -> None:
    other = tmp_path / "other" / "audit.jsonl"  # as many records, of the same lengths, other contents
    append(other, [{"kind": "inference", "request_id": f"x{i}", "outcome": "served"} for i in range(signed_site.n)])
    assert len(other.read_bytes()) == len(signed_site.log.read_bytes())
    store = signed_site.log.with_name("audit.jsonl.tree")
    for p in store.glob("level-*"):
        p.unlink()
    for p in [*other.with_name("audit.jsonl.tree").glob("level-*"), other.with_name("audit.jsonl.tree") / "index"]:
        shutil.copy(p, store / p.name)
    _refused(signed_site, "cp2", "leaf 40 in level-00")


def test_truncated_level_is_recomputed_and_checked_before_signing(signed_site: Site) -> None:
    # a fresh command's catch-up recomputes a level that fell short (the crash recovery) from the level
    # below; the check then covers the recomputed nodes, and the root signed is the records' own
    store = signed_site.log.with_name("audit.jsonl.tree")
    os.truncate(store / "level-01", 5 * 32)
    _flip(store / "level-00", 60)  # and a bad leaf under it: recomputing level 1 must not launder it
    _refused(signed_site, "cp2", "leaf 60 in level-00")


def test_rejects_records_cut_below_the_signed_checkpoint(signed_site: Site) -> None:
    data = signed_site.log.read_bytes()
    keep = b"".join(line + b"\n" for line in data.split(b"\n")[:30])
    signed_site.log.write_bytes(keep)
    out = signed_site.vendor / "cp2"
    done = run("audit", "checkpoint", "--log", signed_site.log, "--out", out, "--host-key", signed_site.key)
    assert done.exit_code == 3 and "fewer than the 40 it signed" in done.output, done.output
    assert not out.exists()
    done = run("audit", "checkpoint", "--log", signed_site.log, "--out", out, "--host-key", signed_site.key,
               "--rebuild-store")
    assert done.exit_code == 3 and "a rebuild of the store cannot fix it" in done.output, done.output


def test_append_with_checkpoints_refuses_a_level_truncated_under_it(tmp_path: Path) -> None:
    # a level cut while `audit append` runs is not caught up (the appender owns the store): the next
    # automatic checkpoint finds the hole and stops the append, exit 3; what was acknowledged stays
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([*GAPSHIP, "audit", "append", "--log", str(log), "--max-delay", "0", "--ack",
                             "--checkpoint-every", "50", "--host-key", str(tmp_path / "k.key")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"".join(json.dumps(r).encode() + b"\n" for r in records(0, 10)))
    proc.stdin.flush()
    assert proc.stdout.readline().startswith(b"ack 1 ")
    while log.read_bytes().count(b"\n") < 10:  # every ack line printed; the store matches 10 records
        proc.stdout.readline()
    os.truncate(tmp_path / "log.jsonl.tree" / "level-00", 5 * 32)
    _, err = proc.communicate(b"".join(json.dumps(r).encode() + b"\n" for r in records(10, 60)), timeout=60)
    assert proc.returncode == 3, err
    assert b"leaf 5 in level-00" in err and b"nothing signed" in err
    assert not list((tmp_path / "log.jsonl.tree" / "checkpoints").glob("*.note"))


def test_export_since_refuses_to_sign_over_a_bad_store(signed_site: Site) -> None:
    _flip(signed_site.log.with_name("audit.jsonl.tree") / "level-00", 45)
    out = signed_site.vendor / "exp"
    done = run("audit", "export", "--log", signed_site.log, "--since", signed_site.vendor / "cp1", "--out", out,
               "--host-key", signed_site.key)
    assert done.exit_code == 3 and "leaf 45 in level-00" in done.output, done.output
    assert not out.exists()
    assert [p.name for p in (signed_site.log.with_name("audit.jsonl.tree") / "checkpoints").glob("*.note")] == [
        "0000000000000040.note"]
    _refused(signed_site, "cp2", "leaf 45 in level-00")
    exported = signed_site.export(signed_site.vendor / "cp1", "exp")
    code, output = signed_site.verify(exported, signed_site.vendor / "cp1")
    assert code == 0, output


def _bounded_run(*args: str | Path, timeout: float = 60) -> tuple[int, str]:
    """The CLI in a daemon thread: a read that blocks (a FIFO) fails the test instead of hanging it."""
    import threading

    box: list[tuple[int, str]] = []
    thread = threading.Thread(target=lambda: box.append((lambda r: (r.exit_code, r.output))(run(*args))), daemon=True)
    thread.start()
    thread.join(timeout)
    assert box, f"gapship {' '.join(map(str, args))} blocked for {timeout}s"
    return box[0]


def test_fifo_among_the_kept_checkpoints_is_never_waited_on(site: Site) -> None:
    """The kept notes in LOG.tree/checkpoints/ are read through the bounded reader: a FIFO there is
    passed over when the host looks for its last signed checkpoint, and refused (exit 3, naming it)
    when an export would carry it."""
    cp = site.checkpoint("cp1")  # size 10
    site.add(10)
    kept = site.log.parent / "audit.jsonl.tree" / "checkpoints"
    os.mkfifo(kept / f"{15:016d}.note")  # between the two: an export since cp1 carries the notes kept between
    os.mkfifo(kept / f"{99:016d}.note")  # the highest: tried first as the last signed checkpoint
    code, out = _bounded_run("audit", "checkpoint", "--log", site.log, "--out", site.vendor / "cp2",
                             "--host-key", site.key)
    assert code == 0, out
    code, out = _bounded_run("audit", "export", "--log", site.log, "--since", cp, "--out", site.vendor / "e",
                             "--host-key", site.key)
    assert code == 3, out
    assert f"{15:016d}.note is not a checkpoint note" in out and len(out.strip().splitlines()) == 1, out
    assert not (site.vendor / "e").exists()
