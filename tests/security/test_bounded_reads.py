"""Every read is bounded and never blocks (issue 13, class 6; docs/security-report.md).

A FIFO, ``/dev/zero`` or a 10 GiB sparse file, put where gapship reads a file (a file an option names,
a trust directory's files, the host state and audit log, a bundle's unverified files, the connected
side's keys, spec and policy), must end the command at once with a one-line error naming the path and
its documented exit code: never a hang, never a read without end, never a traceback. Deep nesting in
every document kind is refused the same way. The bundle's unverified files share one budget, and
every bundle folder is listed with its cap.

The CLI runs in a daemon thread with a timeout (a FIFO that blocks fails the test instead of hanging
the suite), and a few of the attacks run the real ``gapship`` script in a subprocess with a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from attack_site import Site
from gapship.bundler.build import build
from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.spec import load_spec
from gapship.installer.bundle import files as files_module
from gapship.installer.bundle.files import MAX_ROOT_FILE_BYTES, MAX_UNVERIFIED_BYTES
from gapship.installer.crypto.keys import signature_file_name
from gapship.installer.errors import HostError
from gapship.installer.formats.authorization import MAX_AUTHORIZATIONS
from gapship.installer.host.audit import AuditLog
from gapship.installer.kit import MAX_DEPTH
from gapship_testing import POLICY, KeyPair, gapship_script, run
from hostile import Payload, craft, snapshot, standard_payload

TIMEOUT = 60  # seconds; each command here returns in well under one unless a read blocks
TEN_GIB = 10 * 1024**3
DEEP = 100_000  # nesting levels: far past the interpreter's stack
SITE_FILE = b'site_id = "test-site"\nsafeguards = ["inference-audit-log"]\n'


@dataclass(frozen=True)
class World:
    """A connected side and a site in one folder, every file in place (copied for each test)."""

    root: Path

    def copy(self, to: Path) -> Path:
        """A copy whose site file keeps the site's log inside it (subprocesses too; the in-process
        runs would use the session's, tests/conftest.py)."""
        d = Path(shutil.copytree(self.root, to, symlinks=True))
        (d / "site.toml").write_bytes(SITE_FILE + f'audit_log = "{d / "site-audit.jsonl"}"\n'.encode())
        return d


def _keypair(folder: Path, name: str) -> KeyPair:
    private, public, _ = keygen(name, folder)
    return KeyPair(name, private, public, SigningKey.load(private))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    d = tmp_path_factory.mktemp("world")
    keys = {name: _keypair(d / "keys", name) for name in ("release", "root", "auth")}
    (d / "legacy").mkdir()
    shutil.copy(keys["release"].public, d / "legacy" / "release.pub")
    _ok(run("trust", "init", "--trust", d / "rootdir", "--root-key", keys["root"].public, "--release-key",
            keys["release"].public, "--authorize-key", keys["auth"].public, "--sign-with", keys["root"].private))
    src = d / "src"
    (src / "model").mkdir(parents=True)
    (src / "model" / "config.json").write_bytes(b"{}\n")
    (src / "model" / "w.bin").write_bytes(b"weights " * 600)
    (src / "policy.toml").write_bytes(POLICY)
    (src / "spec.toml").write_text('[bundle]\nname = "demo"\nversion = "1.0.0"\n\n[[model]]\nname = "tiny"\n'
                                   'source = "model"\n\n[safeguards]\nsource = "policy.toml"\n')
    build(load_spec(src / "spec.toml"), out=d / "bundle", key=keys["release"].key, chunk_size=1 << 20)
    _ok(run("install", d / "bundle", "--trust", d / "rootdir", "--prefix", d / "prefix"))
    (d / "site.toml").write_bytes(SITE_FILE)
    _ok(run("verify", d / "bundle", "--trust", d / "rootdir", "--site-config", d / "site.toml", "--audit-log",
            d / "audit.jsonl"))
    _ok(run("audit", "export", "--out", d / "exp1", "--log", d / "audit.jsonl", "--host-key", d / "hk" / "host.key"))
    (d / "new").mkdir()
    (d / "auth").mkdir()
    return World(d)


def _ok(result: Result) -> None:
    assert result.exit_code == 0, (result.stdout, result.stderr)


def run_bounded(*args: str | Path) -> Result:
    """The CLI in-process, in a daemon thread: a command that blocks fails the test after TIMEOUT
    seconds (a thread blocked in open(2) cannot be stopped; a daemon one is left behind at exit)."""
    box: list[Result | BaseException] = []

    def target() -> None:
        try:
            box.append(run(*args))
        except BaseException as e:  # noqa: BLE001  (reported by the test below)
            box.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert box, f"gapship {' '.join(map(str, args))} blocked for {TIMEOUT}s"
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def assert_refused(args: list[str | Path], *, code: int, needle: str) -> dict[str, Any]:
    """The documented exit code and a one-line error naming ``needle``, in --json and in text; no traceback."""
    result = run_bounded(*args, "--json")
    assert result.exit_code == code, (result.stdout, result.stderr)
    error = json.loads(result.stdout)["error"]
    assert error["code"] == code, error
    assert needle in error["message"] and "\n" not in error["message"], error
    text = run_bounded(*args)
    assert text.exit_code == code
    assert text.stderr.splitlines()[0] == f"gapship: error: {error['message']}", text.stderr
    assert "Traceback" not in text.stderr
    return error


# -- what is put in place of a file -------------------------------------------------------------------

def plant(path: Path, kind: str) -> None:
    """A FIFO with no writer, a link to /dev/zero, or a 10 GiB sparse file (no disk used) at ``path``."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as f:
            f.truncate(TEN_GIB)
        os.chmod(path, 0o600)  # so a host key is refused for its size, not its mode


KINDS = ("fifo", "dev-zero", "sparse-10gib")


@dataclass(frozen=True)
class Case:
    target: str  # the file replaced, relative to the world
    argv: tuple[str, ...]  # "{d}" is the world's copy
    codes: tuple[int, int, int]  # the exit code for a FIFO, /dev/zero, a 10 GiB sparse file
    needle: str = ""  # what the message must name (default: the target's file name)

    def args(self, d: Path) -> list[str | Path]:
        return [a.replace("{d}", str(d)) for a in self.argv]


VERIFY_SITE = ("verify", "{d}/bundle", "--trust", "{d}/rootdir", "--site-config", "{d}/site.toml",
               "--audit-log", "{d}/a2.jsonl")
EXPORT = ("audit", "export", "--out", "{d}/e2", "--log", "{d}/audit.jsonl", "--host-key", "{d}/hk/host.key")
CHECK_EXPORT = ("audit", "verify", "--export", "{d}/exp1", "--pubkey", "{d}/hk/host.pub")
BUILD = ("build", "{d}/src/spec.toml", "--out", "{d}/b2", "--key", "{d}/keys/release.key")
INIT = ("trust", "init", "--trust", "{d}/newroot", "--root-key", "{d}/keys/root.pub", "--release-key",
        "{d}/keys/release.pub", "--sign-with", "{d}/keys/root.key")

# The host's own files are exit 7; a file an option names is exit 2 (a bundle's: 3 or 4, as for any
# damaged bundle file); a regular file that is only too large fails the check its format makes of it.
CASES = {
    # disconnected side: files the options name
    "site-config": Case("site.toml", VERIFY_SITE, (2, 2, 2)),
    "audit-verify-log": Case("audit.jsonl", ("audit", "verify", "--log", "{d}/audit.jsonl"), (7, 7, 3)),
    "audit-export-log": Case("audit.jsonl", EXPORT, (7, 7, 3)),
    "audit-export-host-key": Case("hk/host.key", EXPORT, (7, 7, 7)),
    "audit-verify-export": Case("exp1", CHECK_EXPORT, (2, 2, 4)),
    "audit-verify-pubkey": Case("hk/host.pub", CHECK_EXPORT, (2, 2, 2)),
    "audit-verify-previous": Case("exp0", (*CHECK_EXPORT, "--previous", "{d}/exp0"), (2, 2, 4)),
    "trust-update-file": Case("new/2.root.json", ("trust", "update", "--trust", "{d}/rootdir", "{d}/new/2.root.json"),
                              (2, 2, 4)),
    "trust-update-folder": Case("new/2.root.json", ("trust", "update", "--trust", "{d}/rootdir", "{d}/new"), (2, 2, 2)),
    "authorization-option": Case("auth/authorization.json", (*VERIFY_SITE, "--authorization", "{d}/auth"), (4, 4, 4)),
    # disconnected side: the trust directory, the host state
    "trust-root": Case("rootdir/root.json", ("verify", "{d}/bundle", "--trust", "{d}/rootdir"), (7, 7, 7)),
    "trust-history": Case("rootdir/roots/1.root.json", ("verify", "{d}/bundle", "--trust", "{d}/rootdir"), (7, 7, 7)),
    "trust-legacy-pub": Case("legacy/other.pub", ("verify", "{d}/bundle", "--trust", "{d}/legacy"), (7, 7, 7)),
    "trust-authorize-pub": Case("legacy/authorize/a.pub",
                                ("verify", "{d}/bundle", "--trust", "{d}/legacy", "--site-config", "{d}/site.toml",
                                 "--audit-log", "{d}/a2.jsonl"), (7, 7, 7)),
    "trust-sigstore-pin": Case("legacy/sigstore/x.toml", ("verify", "{d}/bundle", "--trust", "{d}/legacy"), (2, 2, 2)),
    "host-state": Case("prefix/.gapship/state.json",
                       ("install", "{d}/bundle", "--trust", "{d}/rootdir", "--prefix", "{d}/prefix", "--allow-reinstall"),
                       (7, 7, 7)),
    "host-state-shown": Case("prefix/.gapship/state.json", ("trust", "show", "--trust", "{d}/rootdir", "--prefix",
                                                            "{d}/prefix"), (7, 7, 7)),
    # a bundle's unverified files (its manifest, signatures and chunks: tests/security/test_bundle_files.py)
    "bundle-root": Case("bundle/roots/2.root.json", ("verify", "{d}/bundle", "--trust", "{d}/rootdir"), (4, 4, 4)),
    "bundle-authorization": Case("bundle/authorizations/a/authorization.json", VERIFY_SITE, (4, 4, 4)),
    # connected side
    "build-key": Case("keys/release.key", BUILD, (2, 2, 2)),
    "build-spec": Case("src/spec.toml", BUILD, (2, 2, 2)),
    "build-policy": Case("src/policy.toml", BUILD, (2, 2, 2)),
    "sign-key": Case("keys/release.key", ("sign", "{d}/bundle", "--key", "{d}/keys/release.key"), (2, 2, 2)),
    "trust-init-root-key": Case("keys/root.pub", INIT, (2, 2, 2)),
    "trust-init-sign-with": Case("keys/root.key", INIT, (2, 2, 2)),
    "trust-add-key": Case("keys/auth.pub", ("trust", "add-key", "--trust", "{d}/rootdir", "{d}/keys/auth.pub",
                                            "--sign-with", "{d}/keys/root.key"), (2, 2, 2)),
    "authorize-key": Case("keys/auth.key", ("authorize", "--site", "s", "--bundle-name", "demo", "--versions", ">=1",
                                            "--expires", "1d", "--key", "{d}/keys/auth.key", "--out", "{d}/au"),
                          (2, 2, 2)),
    "add-sigstore-trusted-root": Case("tr.json", ("trust", "add-sigstore", "--trust", "{d}/legacy", "--trusted-root",
                                                  "{d}/tr.json", "--identity", "a@b", "--issuer", "https://x"),
                                      (2, 2, 2)),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_special_or_endless_file_in_place_of_a_file_refuses_without_blocking(world: World, tmp_path: Path,
                                                                          name: str, kind: str) -> None:
    """Each file gapship reads, replaced by a FIFO, a link to /dev/zero or a 10 GiB sparse file."""
    case = CASES[name]
    d = world.copy(tmp_path / "w")
    plant(d / case.target, kind)
    assert_refused(case.args(d), code=case.codes[KINDS.index(kind)], needle=case.needle or Path(case.target).name)


OPTIONS = {  # an option given /dev/zero itself
    "--site-config": (*VERIFY_SITE[:5], "/dev/zero", *VERIFY_SITE[6:]),
    "--log": ("audit", "verify", "--log", "/dev/zero"),
    "--export": ("audit", "verify", "--export", "/dev/zero", "--pubkey", "{d}/hk/host.pub"),
    "--pubkey": ("audit", "verify", "--export", "{d}/exp1", "--pubkey", "/dev/zero"),
    "--previous": (*CHECK_EXPORT, "--previous", "/dev/zero"),
    "--host-key": (*EXPORT[:-1], "/dev/zero"),
    "trust update ROOTS": ("trust", "update", "--trust", "{d}/rootdir", "/dev/zero"),
    "--key": (*BUILD[:-1], "/dev/zero"),
    "SPEC": ("build", "/dev/zero", *BUILD[2:]),
    "--root-key": (*INIT[:5], "/dev/zero", *INIT[6:]),
    "--sign-with": (*INIT[:-1], "/dev/zero"),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_dev_zero_given_to_an_option_refuses_without_reading_it(world: World, tmp_path: Path, option: str) -> None:
    d = world.copy(tmp_path / "w")
    argv = [a.replace("{d}", str(d)) for a in OPTIONS[option]]
    code = 7 if option in ("--log", "--host-key") else 2  # the audit log and the host key are the host's
    error = assert_refused(argv, code=code, needle="/dev/zero")
    assert "character device" in error["message"] or "not a regular file" in error["message"], error


@pytest.mark.parametrize("target", ["site.toml", "rootdir/root.json", "legacy/other.pub", "bundle/roots/2.root.json"])
def test_fifo_does_not_hang_the_real_gapship_command(world: World, tmp_path: Path, target: str) -> None:
    """The installed console script, in a subprocess with a timeout: a FIFO is refused at once."""
    d = world.copy(tmp_path / "w")
    plant(d / target, "fifo")
    trust = "legacy" if target.startswith("legacy") else "rootdir"
    done = subprocess.run([str(gapship_script()), "verify", str(d / "bundle"), "--trust", str(d / trust),
                           "--site-config", str(d / "site.toml"), "--audit-log", str(d / "a2.jsonl"), "--json"],
                          capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    error = json.loads(done.stdout)["error"]
    assert done.returncode == error["code"] and error["code"] in (2, 4, 7), done
    assert Path(target).name in error["message"], error
    assert "FIFO" in error["message"] or "not a regular file" in error["message"], error
    assert "Traceback" not in done.stderr


def test_fifo_receipt_is_reported_by_status_without_blocking(world: World, tmp_path: Path) -> None:
    """status reports an unreadable receipt as that version's problem (and exits 0), never waits on it."""
    d = world.copy(tmp_path / "w")
    plant(d / "prefix" / "demo" / "1.0.0" / "receipt.json", "fifo")
    result = run_bounded("status", "--prefix", d / "prefix", "--json")
    assert result.exit_code == 0, result.stdout
    version = json.loads(result.stdout)["bundles"][0]["versions"][0]
    assert "receipt.json unreadable" in version["problem"] and "FIFO" in version["problem"], version


def test_model_source_swapped_for_a_fifo_during_the_build_refuses(tmp_path: Path) -> None:
    """A source file replaced by a FIFO after the walk (so the walk's lstat saw a file): the payload
    writer opens it without blocking and refuses it. Run in a subprocess: a blocked open cannot be
    interrupted in-process."""
    fifo = tmp_path / "weights.bin"
    os.mkfifo(fifo)
    script = f"""
from pathlib import Path
from gapship.bundler.payload import PayloadWriter
from gapship.installer.errors import UsageError
out = Path({str(tmp_path / "chunks")!r}); out.mkdir()
writer = PayloadWriter(out, chunk_size=4096, algorithm="sha256", mtime=0)
try:
    writer.add({str(fifo)!r}, "models/tiny/weights.bin", 10, 0o644)
except UsageError as e:
    print("refused:", e.message)
finally:
    writer.abort()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert done.stdout.strip() == f"refused: {fifo} is not a regular file", (done.stdout, done.stderr)


# -- deep nesting in every document kind --------------------------------------------------------------

def deep_json(levels: int = DEEP) -> bytes:
    return b"[" * levels + b"]" * levels


def deep_toml(levels: int = DEEP) -> bytes:
    return b"a = " + b"[" * levels + b"]" * levels + b"\n"


@pytest.mark.parametrize("levels", [DEEP, MAX_DEPTH + 1])
def test_deeply_nested_unsigned_root_in_a_bundle_refuses_verify_and_install(world: World, tmp_path: Path,
                                                                             levels: int) -> None:
    """roots/ is outside the signed manifest: anyone on the transfer path can add to it. A root nested
    past the stack (or just past MAX_DEPTH) is a bad root, exit 4, for verify and for install, and
    the installed version stays as it was."""
    d = world.copy(tmp_path / "w")
    (d / "bundle" / "roots").mkdir()
    (d / "bundle" / "roots" / "2.root.json").write_bytes(deep_json(levels))
    before = snapshot(d / "prefix")
    for command in ("verify", "install"):
        extra = ["--prefix", d / "prefix", "--allow-reinstall"] if command == "install" else []
        assert_refused([command, d / "bundle", "--trust", d / "rootdir", *extra], code=4, needle="roots/2.root.json")
    assert snapshot(d / "prefix") == before
    shutil.rmtree(d / "bundle" / "roots")
    _ok(run_bounded("install", d / "bundle", "--trust", d / "rootdir", "--prefix", d / "prefix", "--allow-reinstall"))


HOST_DOCUMENTS = {  # target, content, argv, exit code, needle
    "site-file": ("site.toml", deep_toml(30_000), VERIFY_SITE, 2, "site.toml"),
    "host-state": ("prefix/.gapship/state.json", deep_json(),
                   ("install", "{d}/bundle", "--trust", "{d}/rootdir", "--prefix", "{d}/prefix", "--allow-reinstall"),
                   7, "state.json"),
    "audit-line": ("audit.jsonl", deep_json(30_000) + b"\n", ("audit", "verify", "--log", "{d}/audit.jsonl"), 3,
                   "line 1"),
    "export-header": ("exp1", deep_json(30_000) + b"\n" + deep_json(30_000) + b"\n", CHECK_EXPORT, 4, "exp1"),
    "trust-root": ("rootdir/root.json", deep_json(), ("verify", "{d}/bundle", "--trust", "{d}/rootdir"), 4,
                   "root.json"),
    "trust-update": ("new/2.root.json", deep_json(), ("trust", "update", "--trust", "{d}/rootdir",
                                                      "{d}/new/2.root.json"), 4, "2.root.json"),
    "sigstore-pin": ("legacy/sigstore/x.toml", deep_toml(5000), ("verify", "{d}/bundle", "--trust", "{d}/legacy"), 2,
                     "x.toml"),
    "spec": ("src/spec.toml", deep_toml(), BUILD, 2, "spec.toml"),
    "policy-source": ("src/policy.toml", deep_toml(), BUILD, 2, "policy.toml"),
}


@pytest.mark.parametrize("name", sorted(HOST_DOCUMENTS))
def test_deeply_nested_document_refuses(world: World, tmp_path: Path, name: str) -> None:
    """Nesting far past the stack in each JSON or TOML document gapship reads: a one-line refusal
    with the document's own exit code, never RecursionError (exit 1)."""
    target, content, argv, code, needle = HOST_DOCUMENTS[name]
    d = world.copy(tmp_path / "w")
    (d / target).parent.mkdir(parents=True, exist_ok=True)
    (d / target).write_bytes(content)
    assert_refused([a.replace("{d}", str(d)) for a in argv], code=code, needle=needle)


def test_deeply_nested_last_audit_line_refuses_the_append(tmp_path: Path) -> None:
    """The append reads the log's last line for its sequence number and hash: nested past the stack,
    it is a damaged log (exit 7), not RecursionError. (When the append happens is class 3's.)"""
    log = tmp_path / "audit.jsonl"
    log.write_bytes(deep_json(30_000) + b"\n")
    with pytest.raises(HostError, match="last line is not a gapship audit record"):
        opened = AuditLog.open(log)  # the tail may be read here already, or at the append
        try:
            opened.append({"command": "verify"})
        finally:
            opened.close()


def test_deeply_nested_signed_authorization_refuses(world: World, tmp_path: Path) -> None:
    """An authorization signed by the authorize key (its signatures are checked before it is parsed)
    but nested past the stack: refused with the authorization's words, not RecursionError."""
    d = world.copy(tmp_path / "w")
    document = deep_json(30_000)
    key = SigningKey.load(d / "keys" / "auth.key")
    (d / "auth" / "signatures").mkdir()
    (d / "auth" / "authorization.json").write_bytes(document)
    (d / "auth" / "signatures" / signature_file_name(key.public.keyid)).write_bytes(key.sign(document))
    error = assert_refused([a.replace("{d}", str(d)) for a in (*VERIFY_SITE, "--authorization", "{d}/auth")], code=5,
                           needle=str(d / "auth"))
    assert "nested too deeply" in error["message"], error


def test_toml_nested_past_max_depth_but_within_the_stack_refuses(world: World, tmp_path: Path) -> None:
    """A site file nesting 100 levels parses (tomllib's stack suffices) but is deeper than any
    document of gapship's: refused as too deep, as JSON past MAX_DEPTH is."""
    d = world.copy(tmp_path / "w")
    (d / "site.toml").write_bytes(SITE_FILE + deep_toml(MAX_DEPTH + 36).replace(b"a = ", b"x = "))
    assert_refused([a.replace("{d}", str(d)) for a in VERIFY_SITE], code=2, needle="nested too deeply")


# -- deep nesting in signed documents: a compromised build --------------------------------------------

def test_deeply_nested_signed_policy_refuses(site: Site, tmp_path: Path) -> None:
    """safeguards/policy.toml, signed (a compromised build) but nested past the stack: read only on a
    site host, it is a policy refusal (exit 5) before anything is written; the prefix is as it was."""
    payload = Payload()
    payload.add("models/tiny/config.json", b"{}")
    payload.add("safeguards/policy.toml", deep_toml())
    bundle = site.write(payload)
    (tmp_path / "site.toml").write_bytes(SITE_FILE)
    before = snapshot(site.prefix)
    error = assert_refused(["install", bundle, "--trust", site.trust, "--prefix", site.prefix, "--site-config",
                            tmp_path / "site.toml", "--audit-log", tmp_path / "audit.jsonl"], code=5,
                           needle="policy.toml")
    assert "nested too deeply" in error["message"]
    assert snapshot(site.prefix) == before
    site.assert_previous_intact()
    site.assert_next_run_succeeds()


def test_deeply_nested_signed_dependencies_target_refuses(site: Site) -> None:
    """dependencies/target.json, signed but nested past the stack: unsafe content (exit 6)."""
    payload = standard_payload()
    payload.add("dependencies/requirements.lock", b"")
    payload.add("dependencies/target.json", deep_json())
    site.assert_refused(site.write(payload), code=6, needles=("target.json", "nested too deeply"))


# -- one budget for the unverified files, and capped listings -----------------------------------------

def test_roots_over_the_unverified_budget_are_refused_before_they_are_read(world: World, tmp_path: Path) -> None:
    """64 roots of 2 MiB each are within their own caps (128 MiB in all, read before any was checked).
    The budget refuses the one that takes them over it, naming it, before reading it."""
    d = world.copy(tmp_path / "w")
    roots = d / "bundle" / "roots"
    roots.mkdir()
    for version in range(2, 66):
        with open(roots / f"{version}.root.json", "wb") as f:
            f.truncate(MAX_ROOT_FILE_BYTES)
    error = assert_refused(["verify", d / "bundle", "--trust", d / "rootdir"], code=4, needle="budget")
    assert f"{MAX_UNVERIFIED_BYTES}-byte budget" in error["message"] and "roots/" in error["message"]


def test_carried_authorizations_share_the_budget_with_signatures_and_roots(world: World, tmp_path: Path) -> None:
    """The authorizations a bundle carries start from what its signatures and roots left: 64 of
    them at their caps (260 MiB) are refused at the budget, not read."""
    d = world.copy(tmp_path / "w")
    folder = d / "bundle" / "authorizations"
    for i in range(MAX_AUTHORIZATIONS):
        sigs = folder / f"a{i:02d}" / "signatures"
        sigs.mkdir(parents=True)
        with open(sigs.parent / "authorization.json", "wb") as f:
            f.truncate(64 * 1024)
        for j in range(64):
            with open(sigs / f"{j:064x}.ed25519.sig", "wb") as f:
                f.truncate(64 * 1024)
    assert_refused([a.replace("{d}", str(d)) for a in VERIFY_SITE], code=4, needle="budget")


def test_carried_authorization_with_a_symlinked_signatures_folder_refuses(world: World, tmp_path: Path) -> None:
    """A carried authorization's signatures/ linked elsewhere would be listed and read outside the bundle."""
    d = world.copy(tmp_path / "w")
    auth = d / "bundle" / "authorizations" / "a"
    auth.mkdir(parents=True)
    (auth / "authorization.json").write_bytes(b"{}")
    (auth / "signatures").symlink_to("/etc")
    assert_refused([a.replace("{d}", str(d)) for a in VERIFY_SITE], code=4, needle="signatures is a symlink")


@pytest.mark.parametrize("folder,cap,code", [("roots", 64, 4), ("authorizations", MAX_AUTHORIZATIONS, 4),
                                             ("chunks", 50, 3)])
def test_bundle_folder_stuffed_with_names_is_refused_on_its_count(world: World, tmp_path: Path, folder: str,
                                                                   cap: int, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of a bundle stuffed with names (empty files cost nothing) is refused on its count,
    read only up to one name past its cap (kit.list_bounded): os.listdir built every one first.
    chunks/ is held to a cap of 50 here, not its 101,000 (making those files takes seconds)."""
    monkeypatch.setattr(files_module, "MAX_CHUNK_ENTRIES", 50)
    d = world.copy(tmp_path / "w")
    where = d / "bundle" / folder
    where.mkdir(exist_ok=True)
    for i in range(cap + 1):
        (where / f"{i:06d}.x").touch()
    argv = VERIFY_SITE if folder == "authorizations" else ("verify", "{d}/bundle", "--trust", "{d}/rootdir")
    error = assert_refused([a.replace("{d}", str(d)) for a in argv], code=code, needle=f"cap of {cap}")
    assert folder in error["message"]
