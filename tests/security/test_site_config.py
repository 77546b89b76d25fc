"""Class 2 of issue 13: a broken site configuration fails closed (docs/safeguards.md, "The site file";
docs/site-admin.md, "A prefix stays a site").

A host used to stop being a site as soon as ``/etc/gapship/site.toml`` did not "exist" in Python's
sense: a dangling symlink or a symlink loop there meant no policy, no authorization, no audit record,
exit 0. Now anything at the default path is the site file, and one that cannot be used refuses, the
same as a bad ``--site-config``; the refusal is on the site's audit log. A prefix once installed as
a site carries ``PREFIX/.gapship/site.json`` and refuses installs without that site's file.

The in-process tests point the default paths into tmp_path (``isolated_host``); the slow test at the
end runs the real CLI against the real ``/etc/gapship/site.toml`` and ``/var/log/gapship`` inside a
private mount namespace (tests/security/ns_site.py), so the host is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from attack_site import Site, Template, build_real_bundle
from gapship_testing import run_json
from hostile import snapshot
from safeguards_testing import Host, isolated_host, log_lines  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("isolated_host")

GOOD_SITE = b'site_id = "test-site"\nsafeguards = ["inference-audit-log"]\n'
NS_SITE = Path(__file__).resolve().parent / "ns_site.py"


@dataclass
class SiteHost(Site):
    """The attacked site, with extra arguments on every command (``--site-config FILE``)."""

    extra: tuple[str | Path, ...] = ()

    def args(self, command: str, bundle: Path) -> list[str | Path]:
        return [*super().args(command, bundle), *self.extra]


def _host_site(site: Site, *extra: str | Path) -> SiteHost:
    return SiteHost(tmp=site.tmp, key=site.key, trust=site.trust, prefix=site.prefix, next_bundle=site.next_bundle,
                    previous_bundle=site.previous_bundle, extra=extra)


# -- the ways a site file can be there and unusable ------------------------------------------------------


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere.toml")


def _loop(path: Path) -> None:
    path.symlink_to(path.name)


def _directory(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _device(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _invalid(path: Path) -> None:
    path.write_bytes(b'site_id = "test-site\nsafeguards = [\n')


# form -> (make it, exit code, words the one-line message must hold)
FORMS: dict[str, tuple[Callable[[Path], None], int, tuple[str, ...]]] = {
    "dangling-symlink": (_dangling, 2, ("is a symlink to", "which does not exist")),
    "symlink-loop": (_loop, 7, ("Too many levels of symbolic links",)),
    "directory": (_directory, 2, ("is a directory",)),
    "fifo": (_fifo, 2, ("FIFO",)),
    "dev-zero": (_device, 2, ("character device",)),
    "empty": (_empty, 2, ("is empty",)),
    "invalid-toml": (_invalid, 2, ("not valid TOML",)),
}


def _refused_records(log: Path) -> list[dict[str, Any]]:
    return [r for r in log_lines(log) if r["decision"] == "refused"] if log.exists() else []


@pytest.mark.parametrize("command", ["install", "verify"])
@pytest.mark.parametrize("form", list(FORMS))
def test_broken_default_site_file_refuses(site: Site, isolated_host: Host, form: str, command: str) -> None:
    """Anything at the default site path that cannot be used refuses install and verify, and the
    refusal is on the site's audit log; on main a dangling link or a loop made the host "not a site"."""
    make, code, needles = FORMS[form]
    path = isolated_host.default_site
    path.parent.mkdir(parents=True)
    make(path)
    attacked = _host_site(site)
    attacked.assert_refused(site.next_bundle, code=code, needles=(str(path), *needles), command=command,
                            next_run=False)
    records = _refused_records(isolated_host.default_log)
    assert len(records) == 2 and all(str(path) in r["reason"]["message"] for r in records), records
    _replace_with_good_site_file(path)
    attacked.assert_next_run_succeeds()


@pytest.mark.parametrize("form", list(FORMS))
def test_broken_explicit_site_config_refuses(site: Site, isolated_host: Host, form: str) -> None:
    """The same forms given with --site-config refuse, and are logged, exactly alike."""
    make, code, needles = FORMS[form]
    path = site.tmp / "site.toml"
    make(path)
    attacked = _host_site(site, "--site-config", path)
    attacked.assert_refused(site.next_bundle, code=code, needles=(str(path), *needles), next_run=False)
    assert len(_refused_records(isolated_host.default_log)) == 2
    _replace_with_good_site_file(path)
    attacked.assert_next_run_succeeds()


def test_site_directory_that_is_a_dangling_symlink_refuses(site: Site, isolated_host: Host) -> None:
    """/etc/gapship itself links to a volume that is not mounted: the site file cannot be reached,
    which is a broken site configuration, not a host without one."""
    folder = isolated_host.default_site.parent
    folder.parent.mkdir(parents=True)
    folder.symlink_to(site.tmp / "unmounted" / "gapship")
    _host_site(site).assert_refused(site.next_bundle, code=2, needles=("cannot be reached", str(folder)),
                                    next_run=False)
    assert len(_refused_records(isolated_host.default_log)) == 2


# The installer's CLI with the site's default audit log moved: a site host always writes it (on top of
# --audit-log), and a subprocess does not see isolated_host's monkeypatch.
_CLI_WITH_LOG = ("import sys; from pathlib import Path; import gapship.installer.host.audit as a; "
                 "a.DEFAULT_LOG = Path(sys.argv.pop(1)); from gapship.installer.cli.group import main; main()")


def test_unreadable_site_config_refuses(site: Site, isolated_host: Host) -> None:
    """Mode 000, run without CAP_DAC_OVERRIDE (tests run as root): exit 7 naming the file, and on the
    log (click's own "is not readable" check, exit 2 before any log was open, no longer runs first).
    The default path's case runs in the namespace test below."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv(1) is not installed")
    path = site.tmp / "site.toml"
    path.write_bytes(GOOD_SITE)
    path.chmod(0)
    log = site.tmp / "audit.jsonl"
    argv = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--", sys.executable, "-c", _CLI_WITH_LOG,
            str(isolated_host.default_log), *map(str, site.args("install", site.next_bundle)), "--site-config",
            str(path), "--audit-log", str(log), "--json"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 7, result
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "environment" and "Permission denied" in error["message"], error
    assert str(path) in error["message"] and "\n" not in error["message"]
    assert [r["decision"] for r in log_lines(log)] == ["refused"]
    assert [r["decision"] for r in log_lines(isolated_host.default_log)] == ["refused"]  # the site's own log too
    site.assert_previous_intact()


def _replace_with_good_site_file(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink()
    path.write_bytes(GOOD_SITE)


# -- a prefix stays a site -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def later_bundle(tmp_path_factory: pytest.TempPathFactory, template: Template) -> Path:
    return build_real_bundle(tmp_path_factory.mktemp("later"), template.key, version="4.0.0",
                             files={"config.json": b"{}\n", "w.bin": b"later" * 300})


def _install_as_site(site: Site, site_file: Path) -> None:
    site_file.parent.mkdir(parents=True, exist_ok=True)
    site_file.write_bytes(GOOD_SITE)
    code, out = run_json(*site.args("install", site.next_bundle), "--site-config", site_file)
    assert code == 0, out


def test_marked_prefix_refuses_install_without_site_file(site: Site, isolated_host: Host, later_bundle: Path) -> None:
    """Installed once as site test-site, the prefix refuses a later install made with no site file
    (the file deleted, or its link dangling outside the default path): exit 5 naming the marker, and
    the refusal is on the site's log although no site file says this host is a site."""
    _install_as_site(site, isolated_host.default_site)
    marker = site.prefix / ".gapship" / "site.json"
    assert json.loads(marker.read_bytes())["site_id"] == "test-site"
    isolated_host.default_site.unlink()
    before, logged = snapshot(site.prefix), len(_refused_records(isolated_host.default_log))
    code, out = run_json(*site.args("install", later_bundle))
    assert code == 5, out
    assert out["error"]["subject"] == str(marker), out
    assert all(n in out["error"]["message"] for n in (str(marker), "test-site", "no site file")), out
    assert snapshot(site.prefix) == before
    assert (site.home / "current").readlink() == Path("3.0.0")
    assert len(_refused_records(isolated_host.default_log)) == logged + 1


def test_marked_prefix_refuses_the_site_file_of_another_site(site: Site, isolated_host: Host,
                                                                          later_bundle: Path) -> None:
    """A prefix belongs to one site: marked for agency-x, it refuses an install made with the site
    file of test-site (which the bundle's policy allows), exit 5 naming both and the marker."""
    marker = site.prefix / ".gapship" / "site.json"
    marker.write_bytes(json.dumps({"format": "gapship-site-marker", "format_version": 1, "site_id": "agency-x",
                                   "marked_at": "2026-01-01T00:00:00Z", "source": "/etc/gapship/site.toml"}).encode())
    path = isolated_host.default_site
    path.parent.mkdir(parents=True)
    path.write_bytes(GOOD_SITE)
    _host_site(site).assert_refused(later_bundle, code=5, needles=("agency-x", "test-site", str(marker)),
                                    subject=str(marker), next_run=False)


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"site_id": "x"}', b"[]"])
def test_broken_site_marker_refuses(site: Site, content: bytes) -> None:
    """A marker that cannot be read is never taken as "no marker": exit 7 naming it."""
    marker = site.prefix / ".gapship" / "site.json"
    marker.write_bytes(content)
    site.assert_refused(site.next_bundle, code=7, needles=(str(marker),), next_run=False)


def test_refused_site_install_leaves_no_marker(site: Site, isolated_host: Host, tmp_path: Path) -> None:
    """The marker is written just before current switches: a site install that is refused (here: the
    site lacks a safeguard) does not mark the prefix."""
    lacking = tmp_path / "lacking.toml"
    lacking.write_bytes(b'site_id = "test-site"\nsafeguards = []\n')
    _host_site(site, "--site-config", lacking).assert_refused(site.next_bundle, code=5,
                                                              needles=("inference-audit-log",), next_run=False)
    assert not (site.prefix / ".gapship" / "site.json").exists()


def test_verify_without_prefix_is_not_a_site_when_the_file_is_gone(site: Site, isolated_host: Host) -> None:
    """verify takes no prefix, so a host whose site file is simply absent is not a site for it (no
    policy, no log); what stops the install is the prefix's marker (documented in docs/site-admin.md)."""
    _install_as_site(site, isolated_host.default_site)
    isolated_host.default_site.unlink()
    log_before = log_lines(isolated_host.default_log)
    code, out = run_json(*site.args("verify", site.next_bundle))
    assert code == 0, out
    assert log_lines(isolated_host.default_log) == log_before


# -- the real paths, in a mount namespace ---------------------------------------------------------------


def _unshare_available() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    if probe.returncode != 0:
        return f"this kernel refuses user+mount namespaces with tmpfs: {probe.stderr.decode().strip()}"
    return None


@pytest.mark.slow
def test_broken_site_file_at_the_real_default_path_refuses(site: Site, tmp_path: Path) -> None:
    """The real CLI, the real /etc/gapship/site.toml and /var/log/gapship (an overlay and a tmpfs in a
    private mount namespace): each broken form refuses install, names the file, and is logged."""
    reason = _unshare_available()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(["unshare", "-rm", sys.executable, str(NS_SITE), str(tmp_path / "ns"), str(site.prefix),
                             str(site.trust), str(site.next_bundle)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result
    report: dict[str, Any] = json.loads(result.stdout)
    forms = {**FORMS, "unreadable": (None, 7, ("Permission denied",))}
    for form, (_make, code, needles) in forms.items():
        got = report[form]
        assert got["code"] == code, (form, got)
        assert "/etc/gapship/site.toml" in got["message"] and all(n in got["message"] for n in needles), (form, got)
        assert got["logged"] == ["refused"], (form, got)
        assert got["unchanged"], form
    assert report["good"]["code"] == 0, report["good"]
    assert report["good"]["logged"] == ["intent", "accepted"]  # the intent before anything became visible
    assert report["marked"]["code"] == 5 and report["marked"]["logged"] == ["refused"], report["marked"]


# -- the site's own log path (site file key audit_log) ----------------------------------------------------


def test_site_file_audit_log_takes_the_sites_records(site: Site, isolated_host: Host, tmp_path: Path) -> None:
    """``audit_log`` in the site file moves the site's record: install and verify append there, the
    default log stays untouched, and ``audit verify`` without ``--log`` checks that file."""
    log = tmp_path / "records" / "site.jsonl"
    isolated_host.default_site.parent.mkdir(parents=True)
    isolated_host.default_site.write_bytes(GOOD_SITE + f'audit_log = "{log}"\n'.encode())
    code, out = run_json(*site.args("verify", site.next_bundle))
    assert code == 0, out
    code, out = run_json(*site.args("install", site.next_bundle))
    assert code == 0, out
    assert [r["decision"] for r in log_lines(log)] == ["accepted", "intent", "accepted"]
    assert not isolated_host.default_log.exists()
    code, out = run_json("audit", "verify")
    assert code == 0 and out["log"] == str(log), out


@pytest.mark.parametrize(("value", "words"), [
    ('"audit.jsonl"', "must be an absolute path"),
    ('"/var/log/../tmp/a.jsonl"', "normalised"),
    ('"/var/log/gapship/"', "normalised"),
    ('"/"', "normalised"),
    ("42", "must be an absolute path"),
])
def test_bad_audit_log_in_site_file_refuses_and_is_recorded_in_the_default_log(
        site: Site, isolated_host: Host, tmp_path: Path, value: str, words: str) -> None:
    """A site file whose ``audit_log`` is not a usable path is a broken site file: refused (exit 2)
    naming the key, recorded in the default log (it cannot say where its own log is), nothing installed."""
    config = tmp_path / "site.toml"
    config.write_bytes(GOOD_SITE + f"audit_log = {value}\n".encode())
    before = snapshot(site.prefix)
    code, out = run_json(*site.args("install", site.next_bundle), "--site-config", config)
    assert code == 2, out
    assert "audit_log" in out["error"]["message"] and words in out["error"]["message"], out
    assert snapshot(site.prefix) == before
    assert len(_refused_records(isolated_host.default_log)) == 1
