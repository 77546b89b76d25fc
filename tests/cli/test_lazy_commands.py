"""The ``gapship`` script loads each command's module on first use (GapshipGroup.add_lazy): a site's
``verify``, ``install`` and ``status`` start without importing the bundler (build, dependency
freezing, signing), and ``--help`` still lists every command. ``verify`` off a site host also skips
the site-only modules.

Each check runs in a fresh interpreter: in this one, other tests have imported every module already.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest

# Imported eagerly here, so that cli.commands below holds every command there is: the fresh process
# must list the same ones, loading them lazily. Every module the lazy table names is imported too:
# which of them other tests in this worker had already imported used to decide whether this passed.
from gapship.bundler.cli import authorize, build, keygen, sign, trust as bundler_trust  # noqa: F401
from gapship.bundler.cli.main import cli
from gapship.installer.cli import audit, inspect, install, status, trust, verify  # noqa: F401
from gapship.installer.cli.group import GapshipGroup

for _group in (cli, cli.commands["trust"], cli.commands["audit"]):
    if isinstance(_group, GapshipGroup):
        for _modules in list(_group.lazy.values()):
            for _module in _modules:
                importlib.import_module(_module)
from gapship_testing import KeyPair

# Runs the `gapship` entry point, then writes the names of every module it imported to a file.
PROBE = """
import atexit, json, os, sys

def dump():
    with open(os.environ["GAPSHIP_MODULES_OUT"], "w") as f:
        json.dump(sorted(sys.modules), f)

atexit.register(dump)
from gapship.bundler.cli.main import main
sys.argv = ["gapship", *sys.argv[1:]]
main()
"""
ENTRY_SHIM = {"gapship.bundler", "gapship.bundler.cli", "gapship.bundler.cli.main"}
# What only a site host (site file, authorizations) or a bundle with dependencies needs.
SITE_ONLY = {"gapship.installer.formats.authorization", "gapship.installer.safeguards", "packaging.specifiers",
             "packaging.tags"}


def run_fresh(tmp_path: Path, *args: str | Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = tmp_path / "modules.json"
    out.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "GAPSHIP_MODULES_OUT": str(out)}, timeout=60)
    return done, set(json.loads(out.read_text()))


def bundler_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m == "gapship.bundler" or m.startswith("gapship.bundler.")}


def test_verify_imports_no_bundler_nor_site_module(make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
                                                   make_bundle: Callable[..., Path], tmp_path: Path) -> None:
    key = make_key("release")
    done, modules = run_fresh(tmp_path, "verify", make_bundle(key), "--trust", make_trust(key))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK demo 1.0.0: signed by release")
    assert bundler_modules(modules) == ENTRY_SHIM
    assert "gapship.installer.deploy.install" not in modules  # verify writes nothing; the installer stays unloaded
    assert not {"gapship.installer.oci.client", "http.client", "ssl"} & set(modules)  # a directory, not oci://
    assert not modules & SITE_ONLY


def test_install_imports_no_bundler_module(make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
                                           make_bundle: Callable[..., Path], tmp_path: Path) -> None:
    key = make_key("release")
    prefix = tmp_path / "prefix"
    done, modules = run_fresh(tmp_path, "install", make_bundle(key), "--trust", make_trust(key), "--prefix", prefix)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"installed demo 1.0.0 at {prefix / 'demo' / '1.0.0'}")
    assert (prefix / "demo" / "current" / "models" / "tiny" / "config.json").read_bytes() == b'{"hidden": 4}\n'
    assert bundler_modules(modules) == ENTRY_SHIM
    assert "packaging.tags" not in modules  # a bundle without dependencies needs no wheel tags
    assert not {"gapship.installer.oci.client", "http.client", "ssl"} & set(modules)  # a directory, not oci://


def test_status_imports_no_bundler_module(tmp_path: Path) -> None:
    (tmp_path / "prefix").mkdir()
    done, modules = run_fresh(tmp_path, "status", "--prefix", tmp_path / "prefix", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert bundler_modules(modules) == ENTRY_SHIM


def _listed(help_text: str) -> set[str]:
    section = help_text.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]  # up to the epilog
    return set(re.findall(r"^  (\S+)", section, re.M))


@pytest.mark.parametrize("group", [(), ("trust",), ("audit",)], ids=["gapship", "trust", "audit"])
def test_help_lists_every_command_when_loaded_lazily(group: tuple[str, ...], tmp_path: Path) -> None:
    command = cli.commands[group[0]] if group else cli
    assert isinstance(command, click.Group)
    done, _ = run_fresh(tmp_path, *group, "--help")
    assert done.returncode == 0, done.stderr
    assert _listed(done.stdout) == set(command.commands)


def test_connected_side_commands_run_when_loaded_lazily(tmp_path: Path) -> None:
    done, modules = run_fresh(tmp_path, "keygen", "root", "--out-dir", tmp_path / "keys")
    assert done.returncode == 0, done.stderr
    assert "gapship.bundler.cli.keygen" in modules
    pub, key = tmp_path / "keys" / "root.pub", tmp_path / "keys" / "root.key"
    done, _ = run_fresh(tmp_path, "trust", "init", "--dir", tmp_path / "authority", "--root-key", pub,
                        "--release-key", pub, "--sign-with", key, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == 1
    assert (tmp_path / "authority" / "root.json").is_file()
