"""Anti-rollback, fast-forward recovery, expiry and a clock set back (docs/trust.md).

Prior art: python-tuf test_updater_top_level_update.py (test_new_*_version_rollback,
test_*_fast_forward_recovery, test_expired_*), the TUF spec's freeze attack; RAUC min-bundle-version.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from gapship.bundler.roots import floor_reset, remove_key, sign_root
from gapship.installer.formats.root import FloorReset, Root
from gapship.installer.errors import HostError, PolicyError, TrustError, UsageError
from gapship.installer.deploy.install import install
from gapship.installer.host.state import HostState
from gapship.installer.trust import Allowances, TrustStore
from gapship_testing import run, tree
from trust_testing import DAY, T0, attach, build_bundle, copy_trust, init_root, new_root, verify, verify_and_install


@pytest.fixture
def site(tmp_path: Path, make_key):
    """An authority with one root and one release key, and a site's copy of it."""
    root_key, rel = make_key("root"), make_key("rel")
    init_root(tmp_path / "auth", root=[root_key], release=[rel])
    return copy_trust(tmp_path / "auth", tmp_path / "site"), root_key, rel


def floor(prefix: Path, name: str = "demo") -> str | None:
    return HostState.for_prefix(prefix).load().floor(name)


def test_rejects_rollback(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    v1 = build_bundle(make_spec, tmp_path / "v1", [rel], version="1.0.0")
    v2 = build_bundle(make_spec, tmp_path / "v2", [rel], version="2.0.0", created=T0 + DAY)
    verify_and_install(v1, trust, prefix, now=T0 + 2 * DAY)
    verify_and_install(v2, trust, prefix, now=T0 + 2 * DAY)
    before = tree(prefix)
    with pytest.raises(PolicyError, match=r"rollback refused: demo 1.0.0 is older than 2.0.0") as e:
        verify_and_install(v1, trust, prefix, now=T0 + 2 * DAY)
    assert e.value.exit_code == 5
    assert tree(prefix) == before and (prefix / "demo" / "current").readlink() == Path("2.0.0")


def test_rejects_rollback_through_cli(tmp_path: Path, make_key, make_trust, make_bundle) -> None:
    rel = make_key("rel")
    trust = make_trust(rel)  # the floor does not depend on the trust mode
    prefix = tmp_path / "prefix"
    old, new = make_bundle(rel, version="1.0.0"), make_bundle(rel, version="1.1.0")
    assert run("install", new, "--trust", trust, "--prefix", prefix).exit_code == 0
    before = tree(prefix)
    result = run("install", old, "--trust", trust, "--prefix", prefix)
    assert result.exit_code == 5
    assert "rollback refused: demo 1.0.0 is older than 1.1.0" in result.stderr
    assert tree(prefix) == before


def test_rejects_rollback_that_raced_the_check(tmp_path: Path, site, make_spec) -> None:
    """v1 verified against the state before v2 was installed by another process: the install
    checks the floor again under its lock and refuses."""
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    v1 = build_bundle(make_spec, tmp_path / "v1", [rel], version="1.0.0")
    v2 = build_bundle(make_spec, tmp_path / "v2", [rel], version="2.0.0")
    early = verify(v1, trust, prefix=prefix)
    verify_and_install(v2, trust, prefix)
    before = tree(prefix)
    with pytest.raises(PolicyError, match="rollback refused"):
        install(v1, early, prefix=prefix, state=HostState.for_prefix(prefix))
    assert tree(prefix) == before


def test_rejects_equal_version_without_flag(tmp_path: Path, make_key, make_trust, make_bundle) -> None:
    rel = make_key("rel")
    trust, prefix = make_trust(rel), tmp_path / "prefix"
    bundle = make_bundle(rel)
    assert run("install", bundle, "--trust", trust, "--prefix", prefix).exit_code == 0
    before = tree(prefix)
    result = run("install", bundle, "--trust", trust, "--prefix", prefix)
    assert result.exit_code == 5
    assert "demo 1.0.0 is already the highest version installed here" in result.stderr
    assert "--allow-reinstall" in result.stderr
    assert tree(prefix) == before


def test_allow_reinstall_is_logged(tmp_path: Path, make_key, make_trust, make_bundle) -> None:
    rel = make_key("rel")
    trust, prefix = make_trust(rel), tmp_path / "prefix"
    bundle = make_bundle(rel)
    assert run("install", bundle, "--trust", trust, "--prefix", prefix).exit_code == 0
    result = run("install", bundle, "--trust", trust, "--prefix", prefix, "--allow-reinstall", "--json")
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert out["overrides"] == ["reinstall"] and out["status"] == "already-installed"
    events = HostState.for_prefix(prefix).load().events
    assert [(e["version"], e["overrides"]) for e in events] == [("1.0.0", ["reinstall"])]


def test_allow_downgrade_is_logged_and_keeps_the_floor(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    v2 = build_bundle(make_spec, tmp_path / "v2", [rel], version="2.0.0")
    v1 = build_bundle(make_spec, tmp_path / "v1", [rel], version="1.0.0")
    verify_and_install(v2, trust, prefix)
    result = verify_and_install(v1, trust, prefix, allow=Allowances(downgrade=True))
    assert result.status == "installed" and result.overrides == ("downgrade",)
    receipt = json.loads((prefix / "demo" / "1.0.0" / "receipt.json").read_bytes())
    assert receipt["overrides"] == ["downgrade"]
    assert (prefix / "demo" / "current").readlink() == Path("1.0.0")
    assert floor(prefix) == "2.0.0"  # only a root-signed reset lowers the floor
    assert HostState.for_prefix(prefix).load().events[-1]["overrides"] == ["downgrade"]
    with pytest.raises(PolicyError, match="--allow-reinstall"):
        verify_and_install(v2, trust, prefix)


def test_interrupted_install_finishes_on_plain_rerun(tmp_path: Path, site, make_spec) -> None:
    """Killed after the version directory was renamed into place but before `current` switched and the
    floor was raised: a plain rerun completes it (the floor is raised last)."""
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    v1 = build_bundle(make_spec, tmp_path / "v1", [rel], version="1.0.0")
    v2 = build_bundle(make_spec, tmp_path / "v2", [rel], version="2.0.0")
    verify_and_install(v1, trust, prefix)
    install(v2, verify(v2, trust), prefix=prefix)  # no state: as if killed before the floor was raised
    os.replace(prefix / "demo" / "current", prefix / "demo" / "current.bak")
    os.symlink("1.0.0", prefix / "demo" / "current")  # ... and before current was switched
    os.unlink(prefix / "demo" / "current.bak")
    assert floor(prefix) == "1.0.0"
    result = verify_and_install(v2, trust, prefix)
    assert result.status == "already-installed" and result.overrides == ()
    assert (prefix / "demo" / "current").readlink() == Path("2.0.0") and floor(prefix) == "2.0.0"


def test_rejects_fast_forward(tmp_path: Path, make_key, make_spec) -> None:
    """A stolen release key signs 999.0.0: once installed, its floor locks out real releases, and
    nothing but a root-signed reset can lower it. A reset signed by the release key is refused."""
    root_key, stolen, rel = make_key("root"), make_key("stolen"), make_key("rel")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[stolen, rel])
    trust = copy_trust(auth, tmp_path / "site")
    prefix = tmp_path / "prefix"
    verify_and_install(build_bundle(make_spec, tmp_path / "ff", [stolen], version="999.0.0"), trust, prefix)
    real = build_bundle(make_spec, tmp_path / "real", [rel], version="2.0.0")
    with pytest.raises(PolicyError, match="rollback refused: demo 2.0.0 is older than 999.0.0"):
        verify_and_install(real, trust, prefix)
    # The thief writes the reset into a root of his own making: it is not signed by the root key.
    forged_auth = copy_trust(auth, tmp_path / "forged")
    with pytest.raises(UsageError, match="not a root key"):
        new_root(forged_auth, floor_reset("demo", from_version="999.0.0", to_version="0"), sign_with=[stolen])
    v1 = TrustStore.from_dir(auth).root
    forged = Root(version=2, expires=v1.expires, keys=v1.keys, roles=v1.roles, names=v1.names,
                  floor_resets=(FloorReset("demo", "999.0.0", "0"),))
    bundle = build_bundle(make_spec, tmp_path / "real2", [rel], version="2.0.0")
    (bundle / "roots").mkdir()
    (bundle / "roots" / "2.root.json").write_bytes(sign_root(forged, [stolen.key]).to_bytes())
    with pytest.raises(TrustError, match="by the root keys of trusted v1"):
        verify_and_install(bundle, trust, prefix)
    assert floor(prefix) == "999.0.0"


def test_fast_forward_recovery_with_root_signed_reset(tmp_path: Path, make_key, make_spec) -> None:
    root_key, stolen, rel = make_key("root"), make_key("stolen"), make_key("rel")
    auth = tmp_path / "auth"
    init_root(auth, root=[root_key], release=[stolen, rel])
    trust = copy_trust(auth, tmp_path / "site")
    prefix = tmp_path / "prefix"
    verify_and_install(build_bundle(make_spec, tmp_path / "ff", [stolen], version="999.0.0"), trust, prefix)
    # The authority revokes the stolen key and resets the floor, in the roots the next bundle carries.
    new_root(auth, remove_key(stolen.keyid, role=None, threshold=None), sign_with=[root_key])
    new_root(auth, floor_reset("demo", from_version="999.0.0", to_version="1.0.0"), sign_with=[root_key])
    real = build_bundle(make_spec, tmp_path / "real", [rel], version="2.0.0")
    attach(real, auth, 2, 3)
    result = verify_and_install(real, trust, prefix)
    assert result.status == "installed" and floor(prefix) == "2.0.0"
    assert HostState.for_prefix(prefix).load().events[-1]["floor_reset_from"] == "999.0.0"
    # The reset is one-shot: it matched the floor 999.0.0 only; 1.5.0 is a rollback now.
    older = build_bundle(make_spec, tmp_path / "older", [rel], version="1.5.0")
    with pytest.raises(PolicyError, match="older than 2.0.0"):
        verify_and_install(older, trust, prefix)


def test_rejects_expired(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    bundle = build_bundle(make_spec, tmp_path / "b", [rel], expires="30d")
    assert verify(bundle, trust, now=T0 + 29 * DAY).manifest.expires == "2026-03-31T12:00:00Z"
    prefix = tmp_path / "prefix"
    with pytest.raises(PolicyError, match=r"demo 1.0.0 expired at 2026-03-31T12:00:00Z") as e:
        verify_and_install(bundle, trust, prefix, now=T0 + 30 * DAY)
    assert e.value.exit_code == 5 and not prefix.exists()


def test_rejects_expired_through_cli(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    bundle = build_bundle(make_spec, tmp_path / "b", [rel], expires="2026-03-02T00:00:00Z")
    prefix = tmp_path / "prefix"
    for args in (("verify", bundle, "--trust", trust), ("install", bundle, "--trust", trust, "--prefix", prefix)):
        result = run(*args)
        assert result.exit_code == 5, result.output
        assert "demo 1.0.0 expired at 2026-03-02T00:00:00Z" in result.stderr
    assert not prefix.exists()


def test_rejects_clock_set_back(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    signed_later = build_bundle(make_spec, tmp_path / "v1", [rel], version="1.0.0", created=T0 + 10 * DAY)
    verify_and_install(signed_later, trust, prefix, now=T0 + 11 * DAY)
    assert HostState.for_prefix(prefix).load().newest_accepted == "2026-03-11T12:00:00Z"
    # Older signing time, newer version, expired by the true clock: a freeze attack needs the clock set back.
    stale = build_bundle(make_spec, tmp_path / "v2", [rel], version="2.0.0", created=T0, expires="5d")
    before = tree(prefix)
    with pytest.raises(PolicyError, match=r"host clock 2026-03-03T12:00:00Z is earlier than 2026-03-11T12:00:00Z"):
        verify_and_install(stale, trust, prefix, now=T0 + 2 * DAY)
    assert tree(prefix) == before


def test_rejects_bundle_signed_after_the_host_clock(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    bundle = build_bundle(make_spec, tmp_path / "b", [rel], created=T0 + 3 * DAY)
    with pytest.raises(PolicyError, match=r"was signed at 2026-03-04T12:00:00Z, later than the host clock"):
        verify(bundle, trust, now=T0 + 2 * DAY)
    assert verify(bundle, trust, now=T0 + 3 * DAY - timedelta(minutes=4)).manifest.version == "1.0.0"  # within skew


def test_rejects_unreadable_state(tmp_path: Path, site, make_spec) -> None:
    """Losing the state would drop every floor: refuse instead of starting from nothing."""
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    verify_and_install(build_bundle(make_spec, tmp_path / "v1", [rel]), trust, prefix)
    state = prefix / ".gapship" / "state.json"
    state.write_bytes(state.read_bytes()[:-20])
    with pytest.raises(HostError, match="is unreadable") as e:
        verify_and_install(build_bundle(make_spec, tmp_path / "v0", [rel], version="0.9.0"), trust, prefix)
    assert e.value.exit_code == 7


def test_state_file_keeps_floors_of_other_bundles(tmp_path: Path, site, make_spec) -> None:
    trust, _, rel = site
    prefix = tmp_path / "prefix"
    verify_and_install(build_bundle(make_spec, tmp_path / "a", [rel], name="alpha", version="3.0.0"), trust, prefix)
    verify_and_install(build_bundle(make_spec, tmp_path / "b", [rel], name="beta", version="1.0.0"), trust, prefix)
    state = HostState.for_prefix(prefix).load()
    assert (state.floor("alpha"), state.floor("beta")) == ("3.0.0", "1.0.0")
    assert sorted(p.name for p in (prefix / ".gapship").iterdir()) == ["state.json", "state.lock"]
