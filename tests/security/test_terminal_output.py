"""Nothing from a bundle reaches a terminal raw (issue 13, class 7; docs/security-report.md).

A file name in ``signatures/``, ``chunks/``, ``roots/`` or ``authorizations/``, a key file's name in a
trust directory, a field of a receipt in the prefix, a host name in an audit export: each is text an
attacker picks, and a terminal obeys what it is sent. ``HOSTILE`` below erases the line it is on,
moves up one line, draws a fake ``OK ... signed by ...`` there, starts a new line and turns the rest
around with a bidi override. Every test runs the real CLI with what a terminal would get (click's
``color=True``: without it click strips ANSI sequences from output that is not a terminal, which
would hide the attack) and checks that every line it printed is printable text showing ``SHOWN``,
the escaped form, and that ``--json`` stays one valid line with the original string.
"""

from __future__ import annotations

import ast
import json
import os
import pty
import select
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from attack_site import Site, Template, build_real_bundle
from gapship.bundler.cli.main import cli
from gapship.bundler.keys import SigningKey, keygen
from gapship.installer.cli.group import escape
from gapship.installer.host import audit
from gapship_testing import KeyPair, gapship_script
from hostile import craft, standard_payload
from safeguards_testing import SITE_POLICY, add_authorize_key, authorization, isolated_host, site_file
from trust_testing import init_root

__all__ = ["isolated_host"]  # a fixture, used by name below

# Erase the line, go up one, draw a fake verdict, new line, then a bidi override, a zero-width space,
# DEL and a C1 control (CSI on terminals that take 8-bit controls).
HOSTILE = "evil\x1b[2K\r\x1b[1AOK demo 3.0.0: signed by boss\n\u202egis.\u200b\x7f\x9b"
SHOWN = r"evil\x1b[2K\r\x1b[1AOK demo 3.0.0: signed by boss\n\u202egis.\u200b\x7f\x9b"
REPO = Path(__file__).resolve().parents[2]


def terminal(*args: str | Path) -> Result:
    """The CLI as a terminal would see it: ANSI sequences are not stripped (``color=True``)."""
    return CliRunner().invoke(cli, [str(a) for a in args], color=True, catch_exceptions=False)


def assert_printable(text: str) -> list[str]:
    """Every line is printable text: no control, format or separator character is left raw."""
    lines = text.split("\n")
    assert lines[-1] == "", repr(text)  # every line ends with a newline, the only one it holds
    for line in lines[:-1]:
        assert line.isprintable(), repr(line)
    return lines[:-1]


def refused(args: tuple[str | Path, ...], *, code: int, message: str) -> dict[str, Any]:
    """Exit ``code``, one printable error line ``message`` (escaped) on stderr, nothing on stdout;
    with ``--json``, one valid line whose ``error.message`` is that same line. Return the JSON error."""
    text = terminal(*args)
    assert text.exit_code == code, (text.stdout, text.stderr)
    assert text.stdout == ""
    lines = assert_printable(text.stderr)
    assert lines[0] == f"gapship: error: {message}", lines
    data = terminal(*args, "--json")
    assert data.exit_code == code
    assert data.stdout.count("\n") == 1 and data.stdout.endswith("\n"), repr(data.stdout)
    error: dict[str, Any] = json.loads(data.stdout)["error"]
    assert error["message"] == message
    return error


def accepted(*args: str | Path, json_args: tuple[str | Path, ...] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Exit 0; the text lines (all printable) and the ``--json`` object (one line), of ``json_args``
    if given (a command that changes something cannot run twice alike)."""
    text = terminal(*args)
    assert text.exit_code == 0, (text.stdout, text.stderr)
    data = terminal(*(json_args or args), "--json")
    assert data.exit_code == 0, data.stdout
    assert data.stdout.count("\n") == 1, repr(data.stdout)
    return assert_printable(text.stdout), json.loads(data.stdout)


def copy_bundle(template: Template, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template.next_bundle, tmp_path / "bundle"))


# -- names a bundle carries ----------------------------------------------------------------------------


def test_escape_sequence_in_extra_chunk_name_cannot_redraw_the_refusal(site: Site, template: Template,
                                                                      tmp_path: Path) -> None:
    bundle = copy_bundle(template, tmp_path)
    (bundle / "chunks" / HOSTILE).write_bytes(b"x")
    message = f"chunks/{SHOWN} is not part of this bundle (extra chunk)"
    for command in ("verify", "install"):
        error = refused(tuple(site.args(command, bundle)), code=3, message=message)
        assert error["subject"] == f"chunks/{HOSTILE}"  # the original name, which JSON escapes
    site.assert_previous_intact()


def test_newline_in_signature_file_name_cannot_forge_an_ok_line(template: Template, tmp_path: Path) -> None:
    bundle = copy_bundle(template, tmp_path)
    (bundle / "signatures" / HOSTILE).write_bytes(b"not a signature")
    for extra in ((), ("--trust", template.trust)):
        lines, data = accepted("inspect", bundle, *extra)
        assert any(SHOWN in line for line in lines), lines
        assert not any(line.startswith("OK") for line in lines), lines
        assert HOSTILE in [s["file"] for s in data["signatures"]]
    lines, _ = accepted("verify", bundle, "--trust", template.trust)  # an unknown file does not count
    assert lines[0].startswith("OK demo 3.0.0: signed by release.pub ("), lines


def test_escape_sequence_in_roots_file_name_is_shown_escaped(tmp_path: Path) -> None:
    root_key, release = _key(tmp_path, "root"), _key(tmp_path, "release")
    trust = tmp_path / "trust"
    init_root(trust, root=[root_key], release=[release], expires=datetime.now(timezone.utc) + timedelta(days=30))
    bundle = build_real_bundle(tmp_path, release, version="1.0.0", files={"w.bin": b"w" * 100})
    (bundle / "roots").mkdir()
    (bundle / "roots" / HOSTILE).write_bytes(b"{}")
    error = refused(("verify", bundle, "--trust", trust), code=4,
                    message=f"roots/{SHOWN} is not a <version>.root.json file")
    assert error["subject"] == f"roots/{HOSTILE}"


def test_bidi_override_in_authorization_directory_name_is_shown_escaped(isolated_host: Any, tmp_path: Path) -> None:
    release, authorizer = _key(tmp_path, "release"), _key(tmp_path, "authorizer")
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(release.public, trust)
    add_authorize_key(trust, authorizer)
    bundle = _site_bundle(tmp_path, release)
    carried = bundle / "authorizations" / HOSTILE
    carried.parent.mkdir()
    authorization(carried, authorizer, site_id="lab", name="demo", versions=">=1")  # for another site
    sensitive = site_file(tmp_path, "agency-x", "inference-audit-log", "content-filter")
    error = refused(("verify", bundle, "--trust", trust, "--site-config", sensitive), code=5,
                    message=f"authorization {bundle}/authorizations/{SHOWN} is for site 'lab', "
                            f"not this site 'agency-x'")
    assert error["subject"] == str(carried)


def test_escape_sequence_in_manifest_field_is_escaped_once(template: Template, tmp_path: Path) -> None:
    """The error hierarchy quotes such a value with repr, which escapes it already: it is not
    escaped a second time (``\\x1b``, not ``\\\\x1b``)."""
    crafted = craft(standard_payload())
    crafted.manifest["created"] = "2026-01-01T00:00:00Z\x1b[2K"
    bundle = crafted.write(tmp_path / "bundle", signers=(template.key,))
    for command in ("inspect", "verify"):
        refused((command, bundle, "--trust", template.trust), code=6,
                message=r"manifest field created '2026-01-01T00:00:00Z\x1b[2K' is not YYYY-MM-DDTHH:MM:SSZ")


def test_file_name_that_is_not_utf8_is_escaped_not_a_crash(template: Template, tmp_path: Path) -> None:
    """A name with bytes that are not UTF-8 comes back from the file system as lone surrogates, which
    no terminal encoding can print: escaped (``\\udcff``), it is an integrity error like any other."""
    bundle = copy_bundle(template, tmp_path)
    (bundle / "chunks" / os.fsdecode(b"\xff\xfe\x1b[2K")).write_bytes(b"x")
    refused(("verify", bundle, "--trust", template.trust), code=3,
            message=r"chunks/\udcff\udcfe\x1b[2K is not part of this bundle (extra chunk)")
    done = subprocess.run([str(gapship_script()), "verify", str(bundle), "--trust", str(template.trust)],
                          capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"}, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stderr.decode("ascii").startswith("gapship: error: chunks/\\udcff\\udcfe\\x1b[2K ")


def test_escape_sequence_reaches_a_real_terminal_escaped(template: Template, tmp_path: Path) -> None:
    """The real command on a real (pseudo-)terminal: stdout and stderr are a tty, so click strips
    nothing; the bytes the terminal receives hold no escape character and no bare carriage return."""
    bundle = copy_bundle(template, tmp_path)
    (bundle / "chunks" / HOSTILE).write_bytes(b"x")
    code, seen = _on_a_terminal([str(gapship_script()), "verify", str(bundle), "--trust", str(template.trust),
                                 "--no-progress"])
    assert code == 3
    assert b"\x1b" not in seen and b"\x9b" not in seen.replace(b"\\x9b", b""), seen
    assert seen.replace(b"\r\n", b"\n").count(b"\r") == 0, seen  # the tty turns each \n into \r\n
    assert f"gapship: error: chunks/{SHOWN} is not part".encode() in seen, seen


def test_hostile_name_in_a_usage_error_is_escaped(template: Template, tmp_path: Path) -> None:
    """A glob over a bundle's files (``gapship verify bundle/chunks/*``) puts its names on the command
    line; click's own usage error, which names them, is escaped too."""
    args = ("verify", template.next_bundle, HOSTILE, "--trust", template.trust)
    text = terminal(*args)
    assert text.exit_code == 2
    lines = assert_printable(text.stderr)
    assert lines[-1] == f"Error: Got unexpected extra argument ({SHOWN})", lines
    data = terminal(*args, "--json")
    assert data.exit_code == 2 and data.stdout.count("\n") == 1
    assert json.loads(data.stdout)["error"]["message"] == f"Got unexpected extra argument ({SHOWN})"


# -- names on the host's side: trust directory, prefix, audit log --------------------------------------


def test_escape_sequence_in_key_file_name_cannot_fake_the_signer(template: Template, tmp_path: Path) -> None:
    """In legacy mode a key's name is its file's name in the trust directory: shown in verify's
    ``signed by`` line, install's, and ``trust show``."""
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(template.key.public, trust / f"{HOSTILE}.pub")
    lines, data = accepted("verify", template.next_bundle, "--trust", trust)
    assert lines[0] == f"OK demo 3.0.0: signed by {SHOWN}.pub ({template.key.keyid[:16]})", lines
    lines, data = accepted("trust", "show", "--trust", trust)
    assert any(line.endswith(f" {SHOWN}.pub") for line in lines), lines
    assert data["keys"][0]["name"] == f"{HOSTILE}.pub"
    lines, _ = accepted("install", template.next_bundle, "--trust", trust, "--prefix", tmp_path / "prefix",
                        json_args=("install", template.next_bundle, "--trust", trust, "--prefix", tmp_path / "p2"))
    assert any(f"signed by {SHOWN}.pub (" in line for line in lines), lines


def test_ignored_key_file_name_in_a_root_trust_directory_is_shown_escaped(tmp_path: Path) -> None:
    root_key, release = _key(tmp_path, "root"), _key(tmp_path, "release")
    trust = tmp_path / "trust"
    init_root(trust, root=[root_key], release=[release], expires=datetime.now(timezone.utc) + timedelta(days=30))
    shutil.copy(release.public, trust / f"{HOSTILE}.pub")
    lines, data = accepted("trust", "show", "--trust", trust)
    assert lines[-1] == f"  (ignored: {SHOWN}.pub; root.json decides)", lines
    assert f"{HOSTILE}.pub" in data["ignored_files"]


def test_escape_sequence_in_trust_update_file_name_is_shown_escaped(tmp_path: Path) -> None:
    root_key, release = _key(tmp_path, "root"), _key(tmp_path, "release")
    trust = tmp_path / "trust"
    init_root(trust, root=[root_key], release=[release], expires=datetime.now(timezone.utc) + timedelta(days=30))
    hostile = tmp_path / HOSTILE
    hostile.write_bytes(b"[]")
    text = terminal("trust", "update", "--trust", trust, hostile)
    assert text.exit_code == 4, text.stderr
    lines = assert_printable(text.stderr)
    assert SHOWN in lines[0] and HOSTILE not in lines[0], lines


def test_control_characters_planted_in_a_receipt_are_escaped_by_status(site: Site) -> None:
    receipt = site.home / "1.0.0" / "receipt.json"
    data = json.loads(receipt.read_bytes())
    data.update(installed_by=HOSTILE, installed_at=HOSTILE, signers=[HOSTILE])
    os.chmod(receipt, 0o644)
    receipt.write_text(json.dumps(data))
    planted = site.home / HOSTILE
    planted.mkdir()
    (planted / "receipt.json").write_text("{")
    lines, out = accepted("status", "--prefix", site.prefix)
    assert any(f"installed {SHOWN}" in line for line in lines), lines
    assert any(line.startswith(f"   {SHOWN}: receipt.json unreadable") for line in lines), lines
    versions = {v["version"]: v for v in out["bundles"][0]["versions"]}
    assert versions["1.0.0"]["installed_by"] == HOSTILE and HOSTILE in versions


def test_escape_sequence_in_audit_log_name_and_export_host_is_escaped(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / HOSTILE
    log.write_bytes(b"")
    lines, _ = accepted("audit", "verify", "--log", log)
    assert lines[0].startswith(f"OK {tmp_path}/{SHOWN}: 0 line(s)"), lines
    monkeypatch.setattr(audit.socket, "gethostname", lambda: HOSTILE)  # the exporting host names itself
    key = tmp_path / "host.key"
    lines, _ = accepted("audit", "export", "--log", log, "--out", tmp_path / "e1", "--host-key", key,
                        json_args=("audit", "export", "--log", log, "--out", tmp_path / "e2", "--host-key", key))
    assert lines[0].startswith("exported 0 line(s) of "), lines
    lines, out = accepted("audit", "verify", "--export", tmp_path / "e1", "--pubkey", tmp_path / "host.pub")
    assert lines[0].startswith(f"OK {tmp_path}/e1: signed by host {SHOWN} (key "), lines
    assert out["host"] == HOSTILE


def test_refusal_naming_a_hostile_audit_log_path_is_escaped(tmp_path: Path) -> None:
    """A message that names a value without repr (here the log's path) is escaped by the printer."""
    log = tmp_path / HOSTILE
    log.write_bytes(b"not json\n")
    refused(("audit", "verify", "--log", log), code=3, message=f"{tmp_path}/{SHOWN}: line 1 is not JSON: it was edited")


# -- the escaping itself -------------------------------------------------------------------------------


def test_progress_bar_carries_no_raw_bundle_text(template: Template, tmp_path: Path) -> None:
    """tqdm draws with carriage returns of its own; what it draws is a fixed label and numbers, and
    the label goes through the same escaping."""
    bundle = copy_bundle(template, tmp_path)
    (bundle / "chunks" / HOSTILE).write_bytes(b"x")
    text = terminal("verify", bundle, "--trust", template.trust, "--progress")
    assert text.exit_code == 3
    assert HOSTILE not in text.stderr and "\x1b" not in text.stderr and "\u202e" not in text.stderr
    assert escape("ver\x1bify") == r"ver\x1bify"


@pytest.mark.parametrize("name", ["José Müller", "发布密钥", "ключ-выпуска", "clé d'été"])
def test_letters_of_every_script_stay_readable(name: str, template: Template, tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(template.key.public, trust / f"{name}.pub")
    lines, _ = accepted("verify", template.next_bundle, "--trust", trust)
    assert lines[0] == f"OK demo 3.0.0: signed by {name}.pub ({template.key.keyid[:16]})"


@pytest.mark.parametrize(("raw", "shown"), [
    ("a\\b", "a\\\\b"),  # a backslash is escaped, so the escaping can be undone
    ("\\x1b", "\\\\x1b"),  # four characters, not an escape character
    ("\x00\x07\x08\x1b\x7f", r"\x00\x07\x08\x1b\x7f"),  # C0 and DEL
    ("\x85\x9b\x9d", r"\x85\x9b\x9d"),  # C1: next line, CSI, OSC
    ("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e", r"\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"),
    ("\u2066\u2067\u2068\u2069", r"\u2066\u2067\u2068\u2069"),  # bidi isolates
    ("\u200b\u200c\u200d\u2060\ufeff\u00ad", r"\u200b\u200c\u200d\u2060\ufeff\xad"),  # zero-width, soft hyphen
    ("\u2028\u2029", r"\u2028\u2029"),  # line and paragraph separators
    ("\ud800\udcff", r"\ud800\udcff"),  # lone surrogates
    ("\U000e0041\U000f0000", r"\U000e0041\U000f0000"),  # tag character (Cf), private use
    ("\n\r\t", r"\n\r\t"),
    ("ok é 中 ü", "ok é 中 ü"),
])
def test_escape_writes_every_hiding_character_visibly(raw: str, shown: str) -> None:
    assert escape(raw) == shown


@given(st.text(alphabet=st.characters(blacklist_characters="'")))
def test_escape_is_printable_and_reversible(text: str) -> None:
    shown = escape(text)
    assert shown.isprintable()
    assert ast.literal_eval(f"'{shown}'") == text  # Python's own string-literal notation


@given(st.text(alphabet=st.characters(blacklist_characters="'")))
def test_escaping_an_error_message_twice_changes_nothing(text: str) -> None:
    """Error lines keep their backslashes (repr escaped them already), so escaping is idempotent and a
    message escaped on its way into ``--json`` is printed the same by the text mode."""
    once = escape(repr(text), backslashes=False)
    assert once == repr(text)
    assert escape(escape(text, backslashes=False), backslashes=False) == escape(text, backslashes=False)


def test_no_command_prints_around_the_escaping_layer() -> None:
    """The class, closed by construction: in both command-line packages, only the two writers of
    installer/cli/group.py call ``click.echo``, and nothing calls ``print``, ``click.secho``,
    ``sys.stdout``/``sys.stderr`` writes, prints a traceback or makes a tqdm bar of its own."""
    writers = {"_write_line", "_write_json", "progress_bar"}  # group.py's: escape, JSON, tqdm with desc=escape(...)
    # fast.py: `audit append` without click; its two writers escape through group.py's escape()
    fast_writers = {"_emit_line", "_emit_json"}
    offenders = []
    for path in sorted([*REPO.glob("installer/cli/*.py"), *REPO.glob("bundler/cli/*.py")]):
        tree = ast.parse(path.read_text(), filename=str(path))
        allowed: set[int] = set()
        mine = {REPO / "installer" / "cli" / "group.py": writers, REPO / "installer" / "cli" / "fast.py": fast_writers}
        if path in mine:
            for func in ast.walk(tree):
                if isinstance(func, ast.FunctionDef) and func.name in mine[path]:
                    allowed |= {id(n) for n in ast.walk(func)}
        offenders += [f"{path.relative_to(REPO)}:{n.lineno}: {ast.unparse(n.func)}" for n in ast.walk(tree)
                      if isinstance(n, ast.Call) and _is_output(n.func) and id(n) not in allowed]
    assert offenders == []
    group = (REPO / "installer" / "cli" / "group.py").read_text()
    assert group.count("tqdm(") == 1 and "desc=escape(label)" in group


def _is_output(func: ast.expr) -> bool:
    text = ast.unparse(func)
    return text in {"print", "click.echo", "click.secho", "echo", "secho", "sys.stdout.write", "sys.stderr.write",
                    "click.get_text_stream", "tqdm", "traceback.print_exc", "traceback.print_exception"} or text.endswith((".stdout.write", ".stderr.write"))


# -- helpers -------------------------------------------------------------------------------------------


def _key(tmp_path: Path, name: str) -> KeyPair:
    private, public, _ = keygen(name, tmp_path / "keys")
    return KeyPair(name, private, public, SigningKey.load(private))


def _site_bundle(tmp_path: Path, key: KeyPair) -> Path:
    from safeguards_testing import build_bundle

    return build_bundle(tmp_path, key, policy=SITE_POLICY)


def _on_a_terminal(argv: list[str]) -> tuple[int, bytes]:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal; return its exit code and every byte
    the terminal received."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output for 60 s: {bytes(seen)!r}")
        try:
            block = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not block:
            break
        seen += block
    os.close(master)
    return proc.wait(timeout=60), bytes(seen)
