"""Tests that keep the documentation true to the code.

They run the shell recipes the docs print (the by-hand check of docs/format.md section 10, the
pipeline script of docs/pipeline.md) against real bundles, and compare the docs' tables of exit codes,
commands, options, --json fields and limits with the code they describe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from click.testing import CliRunner
import pytest

from gapship.bundler.cli.main import cli
from gapship.installer import kit as kit_module
from gapship.installer.bundle import files as bundle_module
from gapship.installer.crypto import keys as keys_module
from gapship.installer.formats import authorization as auth_module
from gapship.installer.formats import manifest as manifest_module
from gapship.installer.formats import paths as paths_module
from gapship.installer import trust as trust_module
from gapship.installer.errors import EXIT_CODES
from gapship_testing import KeyPair, run, run_json
from safeguards_testing import isolated_host  # noqa: F401  (a site host's default log goes to tmp_path)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FORMAT = ROOT / "docs" / "format.md"
CLI_DOC = ROOT / "docs" / "cli.md"
PIPELINE = ROOT / "docs" / "pipeline.md"
BY_HAND_MARKER = "<!-- by-hand-check:"
PIPELINE_MARKER = "<!-- pipeline-script:"

# Files with awkward names, so the recipes are tested beyond the easy case: a space, non-ASCII (NFC),
# a name long enough to need a pax header, an empty file, and data that spans several chunks.
AWKWARD_FILES = {
    "config.json": b'{"hidden": 4}\n',
    "sub dir/weights.bin": bytes(range(256)) * 40,
    "donn\u00e9es/caf\u00e9.txt": "d\u00e9j\u00e0 vu\n".encode(),
    "long/" + "n" * 150 + ".bin": b"long name\n",
    "empty": b"",
}


# -- reading the markdown ---------------------------------------------------------------------------


def fenced_block_after(text: str, marker: str) -> str:
    """The content of the first fenced code block after the line holding ``marker``."""
    start = text.index(marker)
    match = re.compile(r"^```[a-z]*\n(.*?)^```$", re.M | re.S).search(text, start)
    assert match is not None, f"no fenced block after {marker!r}"
    return match.group(1)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, content) of every fenced code block, pairing the fences line by line."""
    blocks: list[tuple[str, str]] = []
    info: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            if info is None:
                info, lines = line[3:].strip(), []
            else:
                blocks.append((info, "".join(f"{x}\n" for x in lines)))
                info = None
        elif info is not None:
            lines.append(line)
    return blocks


def sections(text: str, level: str = "## ") -> dict[str, str]:
    """Heading text (without the #'s) -> the text up to the next heading of the same level."""
    out: dict[str, str] = {}
    parts = re.split(rf"^{re.escape(level)}(.+)$", text, flags=re.M)
    for title, body in zip(parts[1::2], parts[2::2]):
        out[title.strip()] = body
    return out


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """Cells of each body row of the first markdown table whose header row starts with ``header_start``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([cell.strip() for cell in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table with header {header_start!r}")


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# -- (a) the by-hand check of docs/format.md section 10 --------------------------------------------


def _have_rawin_openssl() -> bool:
    if not (shutil.which("openssl") and shutil.which("sha256sum") and shutil.which("tar")):
        return False
    help_text = subprocess.run(["openssl", "pkeyutl", "-help"], capture_output=True, text=True)
    return "-rawin" in help_text.stdout + help_text.stderr


needs_tools = pytest.mark.skipif(not _have_rawin_openssl(), reason="needs openssl 3 (pkeyutl -rawin), sha256sum and tar")


@pytest.fixture
def by_hand(tmp_path: Path) -> Callable[[Path, Path], subprocess.CompletedProcess[str]]:
    """Run the documented block with bash -euo pipefail, as the doc says, for a bundle and a key."""
    script = tmp_path / "check-bundle.sh"
    script.write_text(fenced_block_after(FORMAT.read_text(), BY_HAND_MARKER))
    counter = iter(range(1000))

    def check(bundle: Path, key: Path) -> subprocess.CompletedProcess[str]:
        out = tmp_path / f"scratch{next(counter)}"
        out.mkdir()
        env = {**os.environ, "BUNDLE": str(bundle), "KEY": str(key), "OUT": str(out), "LC_ALL": "C"}
        return subprocess.run(["bash", "-euo", "pipefail", str(script)], env=env, capture_output=True,
                              text=True, cwd=tmp_path)

    return check


@pytest.fixture
def signed_bundle(make_key: Callable[[str], KeyPair], make_bundle: Callable[..., Path]) -> tuple[Path, KeyPair]:
    key = make_key("release")
    return make_bundle(key, files=AWKWARD_FILES, chunk_size=1024), key


@needs_tools
def test_by_hand_check_accepts_a_good_bundle(signed_bundle: tuple[Path, KeyPair], by_hand) -> None:
    bundle, key = signed_bundle
    assert len(list((bundle / "chunks").iterdir())) > 3  # the payload really spans several chunks

    result = by_hand(bundle, key.public)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"key id {key.keyid}" in result.stdout
    assert "Signature Verified Successfully" in result.stdout
    assert "bundle OK" in result.stdout


def _tamper_chunk(bundle: Path) -> str:
    chunk = bundle / "chunks" / "00001.bin"
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0x01
    chunk.write_bytes(bytes(data))
    return "chunks/00001.bin: FAILED"


def _tamper_manifest(bundle: Path) -> str:
    manifest = bundle / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"chunk_size":1024', '"chunk_size":1025', 1))
    return "Signature Verification Failure"


def _remove_chunk(bundle: Path) -> str:
    (bundle / "chunks" / "00002.bin").unlink()
    return "chunks/00002.bin: FAILED open or read"


def _add_extra_chunk(bundle: Path) -> str:
    last = sorted((bundle / "chunks").iterdir())[-1]
    shutil.copy(last, bundle / "chunks" / "99999.bin")
    return ""


def _swap_chunks(bundle: Path) -> str:
    a, b = bundle / "chunks" / "00001.bin", bundle / "chunks" / "00002.bin"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    return "chunks/00001.bin: FAILED"


@needs_tools
@pytest.mark.parametrize("tamper", [_tamper_chunk, _tamper_manifest, _remove_chunk, _add_extra_chunk, _swap_chunks],
                         ids=["tampered-chunk", "tampered-manifest", "missing-chunk", "extra-chunk", "reordered-chunks"])
def test_by_hand_check_rejects_a_damaged_bundle(signed_bundle: tuple[Path, KeyPair], by_hand,
                                                tamper: Callable[[Path], str]) -> None:
    bundle, key = signed_bundle
    expected = tamper(bundle)

    result = by_hand(bundle, key.public)

    assert result.returncode != 0, result.stdout
    assert "bundle OK" not in result.stdout
    assert expected in result.stdout + result.stderr


@needs_tools
def test_by_hand_check_rejects_an_untrusted_signer(signed_bundle: tuple[Path, KeyPair], by_hand,
                                                   make_key: Callable[[str], KeyPair]) -> None:
    bundle, _ = signed_bundle
    stranger = make_key("stranger")

    result = by_hand(bundle, stranger.public)

    assert result.returncode != 0
    assert "bundle OK" not in result.stdout
    assert f"{stranger.keyid}.ed25519.sig" in result.stderr  # no signature by that key


@needs_tools
def test_by_hand_key_id_matches_gapship(make_key: Callable[[str], KeyPair], tmp_path: Path) -> None:
    key = make_key("release")
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(key.public), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    digest = subprocess.run(["sha256sum"], input=der, capture_output=True, check=True).stdout.split()[0]
    assert digest.decode() == key.keyid


# -- docs/pipeline.md's example script ---------------------------------------------------------------


@pytest.fixture
def pipeline_script(tmp_path: Path) -> Path:
    gapship = Path(sys.executable).parent / "gapship"
    if not gapship.exists():
        pytest.skip("the gapship console script is not beside this Python")
    script = tmp_path / "forward-chunks.sh"
    script.write_text(fenced_block_after(PIPELINE.read_text(), PIPELINE_MARKER))
    return script


def _inbox_from(bundle: Path, inbox: Path) -> None:
    shutil.copytree(bundle, inbox)


def _run_pipeline(script: Path, inbox: Path, trust: Path, outbox: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", str(script), str(inbox), str(trust), str(outbox)], env=env,
                          capture_output=True, text=True)


def test_pipeline_script_forwards_good_chunks_and_rejects_a_damaged_one(
        tmp_path: Path, pipeline_script: Path, make_key, make_trust, make_bundle) -> None:
    key = make_key("release")
    bundle = make_bundle(key, chunk_size=32768)
    names = sorted(p.name for p in (bundle / "chunks").iterdir())
    assert len(names) >= 3
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    _inbox_from(bundle, inbox)
    _tamper_chunk(inbox)
    carried = inbox / "authorizations" / "test-site-0123" / "authorization.json"  # forwarded as it is
    carried.parent.mkdir(parents=True)
    carried.write_bytes(b"{}")

    result = _run_pipeline(pipeline_script, inbox, make_trust(key), outbox)

    assert result.returncode == 3, result.stderr
    assert "rejected 00001.bin" in result.stderr
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == ["00001.bin"]
    assert sorted(p.name for p in (outbox / "chunks").iterdir()) == [n for n in names if n != "00001.bin"]
    assert (outbox / "manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()
    assert (outbox / carried.relative_to(inbox)).read_bytes() == b"{}"
    assert (outbox / "provenance" / "statement.json").read_bytes() == (bundle / "provenance" / "statement.json").read_bytes()
    assert not (outbox / "roots").exists()  # the bundle carries none


def test_pipeline_script_stops_on_an_untrusted_manifest(tmp_path: Path, pipeline_script: Path, make_key,
                                                        make_trust, make_bundle) -> None:
    key, stranger = make_key("release"), make_key("stranger")
    bundle = make_bundle(key, chunk_size=32768)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    _inbox_from(bundle, inbox)

    result = _run_pipeline(pipeline_script, inbox, make_trust(stranger), outbox)

    assert result.returncode == 4, result.stderr
    assert '"kind": "trust"' in result.stderr
    assert list((outbox / "chunks").iterdir()) == []
    assert sorted(p.name for p in (inbox / "chunks").iterdir()) == sorted(p.name for p in (bundle / "chunks").iterdir())


# -- the README's tour ---------------------------------------------------------------------------------


def _tour_steps() -> list[tuple[str, str]]:
    """(command, expected output) for every ``$ command`` line of the README's tour, in order."""
    tour = sections(README.read_text())["A 5-minute tour"]
    steps: list[tuple[str, str]] = []
    for info, block in fenced_blocks(tour):
        if info:  # the tour's transcripts are the plain ``` blocks; ```sh blocks are set-up
            continue
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], ""))
            else:
                command, output = steps[-1]
                steps[-1] = (command, output + line + "\n")
    return steps


def _normalised(text: str) -> list[str]:
    """Key ids, digests and times differ at every run, and so does the order of signature files
    (sorted by key id); everything else must match."""
    text = re.sub(r"[0-9a-f]{64}", "<hex64>", text)
    text = re.sub(r"[0-9a-f]{16}", "<hex16>", text)
    return sorted(re.sub(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", "<time>", text).splitlines())


@pytest.mark.slow  # about 20 commands, each flushing keys, chunks or an install to disk
def test_readme_tour_output_is_what_the_commands_print(tmp_path: Path) -> None:
    gapship = Path(sys.executable).parent / "gapship"
    if not gapship.exists():
        pytest.skip("the gapship console script is not beside this Python")
    # The tour runs in demo-out/tour and builds ../../manifests/example.toml: rebuild that here.
    manifests = tmp_path / "manifests"
    (manifests / "example").mkdir(parents=True)
    shutil.copy(ROOT / "manifests" / "example.toml", manifests)
    shutil.copy(ROOT / "manifests" / "example" / "policy.toml", manifests / "example")
    subprocess.run([sys.executable, str(ROOT / "manifests" / "example" / "make_model.py"),
                    str(manifests / "example" / "tiny-model")], check=True, capture_output=True)
    workdir = tmp_path / "demo-out" / "tour"
    workdir.mkdir(parents=True)
    steps = _tour_steps()
    assert len(steps) > 10
    separator = "----- gapship tour step -----"
    script = "".join(f"echo '{separator}'\n{command}\n" for command, _ in steps)
    env = {**os.environ, "PATH": f"{gapship.parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    result = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    outputs = result.stdout.split(separator + "\n")[1:]
    assert len(outputs) == len(steps), result.stdout
    for (command, expected), actual in zip(steps, outputs):
        assert _normalised(actual) == _normalised(expected), command


# -- (b) exit codes ----------------------------------------------------------------------------------


def _exit_code_table(text: str) -> list[tuple[int, str]]:
    return [(int(code), meaning) for code, meaning in table_rows(text, "| code | meaning |")]


def test_readme_exit_code_table_is_exit_codes() -> None:
    section = sections(README.read_text())["Exit codes"]
    assert _exit_code_table(section) == list(EXIT_CODES)


def test_cli_doc_exit_code_table_is_exit_codes() -> None:
    section = sections(CLI_DOC.read_text())["3. Exit codes"]
    assert _exit_code_table(section) == list(EXIT_CODES)


# -- (c) commands, arguments and options of docs/cli.md ----------------------------------------------


def _command_sections() -> dict[str, str]:
    out = {}
    for title, body in sections(CLI_DOC.read_text()).items():
        match = re.fullmatch(r"\d+\. `gapship (\w+)`", title)
        if match:
            out[match.group(1)] = body
    return out


def _documented_parameters(body: str) -> set[str]:
    names = set()
    for row in table_rows(body, "| argument or option |"):
        names.update(token.split()[0] for token in backticked(row[0]))
    return names


def _real_parameters(command: click.Command) -> set[str]:
    """The names a command teaches: its arguments and options, less the hidden old spellings."""
    names = set()
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(set(param.opts + param.secondary_opts) - set(_hidden_aliases(param)))
        else:
            names.add(param.human_readable_name)
    return names


def _hidden_aliases(param: click.Parameter) -> list[str]:
    return list(getattr(param, "hidden_aliases", []))


def _check_hidden_aliases_documented(command: click.Command, body: str) -> None:
    """An old spelling kept for scripts (e.g. ``--dir`` for ``--trust``) is named in the option's
    row of the table, so a reader of an old script can find what it means."""
    for param in command.params:
        for alias in _hidden_aliases(param):
            assert isinstance(param, click.Option)
            rows = [row for row in table_rows(body, "| argument or option |")
                    if any(token.split()[0] == param.opts[0] for token in backticked(row[0]))]
            assert rows and f"`{alias}`" in " ".join(rows[0]), f"{alias} (old spelling of {param.opts[0]})"


def _commands() -> dict[str, click.Command]:
    """Every top-level command, the lazily loaded ones included (``GapshipGroup.add_lazy``): looked up
    as ``gapship --help`` does, so the result does not depend on what other tests imported first."""
    ctx = click.Context(cli)
    found = {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}
    return {name: command for name, command in found.items() if command is not None}


COMMANDS = _commands()


def test_cli_doc_lists_exactly_the_commands() -> None:
    assert set(_command_sections()) == set(COMMANDS) == set(cli.list_commands(click.Context(cli)))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_cli_doc_lists_exactly_the_arguments_and_options_of(name: str) -> None:
    body = _command_sections()[name]
    real = _real_parameters(COMMANDS[name])
    assert _documented_parameters(body) == real
    _check_hidden_aliases_documented(COMMANDS[name], body)
    synopsis = fenced_block_after(body, "")
    assert synopsis.startswith(f"gapship {name} ")
    assert set(re.findall(r"--[a-z][a-z-]*", synopsis)) == {n for n in real if n.startswith("--")}


def _leaf_commands() -> dict[str, click.Command]:
    """Every command a user runs: ``keygen``, ..., and each sub-command of a group (``trust show``)."""
    out: dict[str, click.Command] = {}
    for name, command in COMMANDS.items():
        if isinstance(command, click.Group):
            out.update({f"{name} {sub}": c for sub, c in command.commands.items()})
        else:
            out[name] = command
    return out


SUBCOMMANDS = sorted(path for path in _leaf_commands() if " " in path)


def _subcommand_sections() -> dict[str, str]:
    """``### N.M `gapship GROUP SUB``` sections, each cut at the next heading of either level."""
    out = {}
    for title, body in sections(CLI_DOC.read_text(), "### ").items():
        match = re.fullmatch(r"\d+\.\d+ `gapship (\w+) ([\w-]+)`", title)
        if match:
            out[f"{match.group(1)} {match.group(2)}"] = re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]
    return out


def _leaf_sections() -> dict[str, str]:
    return {**{n: b for n, b in _command_sections().items() if n in _leaf_commands()}, **_subcommand_sections()}


def test_cli_doc_lists_exactly_the_subcommands() -> None:
    assert set(_subcommand_sections()) == set(SUBCOMMANDS)


@pytest.mark.parametrize("path", SUBCOMMANDS)
def test_cli_doc_lists_exactly_the_arguments_and_options_of_subcommand(path: str) -> None:
    body = _subcommand_sections()[path]
    real = _real_parameters(_leaf_commands()[path])
    assert _documented_parameters(body) == real
    _check_hidden_aliases_documented(_leaf_commands()[path], body)
    synopsis = fenced_block_after(body, "")
    assert synopsis.startswith(f"gapship {path} ")
    assert set(re.findall(r"--[a-z][a-z-]*", synopsis)) == {n for n in real if n.startswith("--")}


def test_cli_doc_global_options_exist() -> None:
    body = sections(CLI_DOC.read_text())["1. Global options"]
    documented = set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", fenced_block_after(body, "")))
    real = {o for p in cli.params if isinstance(p, click.Option) for o in p.opts}
    real.update(cli.context_settings["help_option_names"])
    assert documented == real


# -- --json fields of docs/cli.md ---------------------------------------------------------------------


def flatten(value: object, prefix: str = "") -> Iterator[str]:
    """Dotted field names of a JSON object; list items are named ``field[].sub``."""
    assert isinstance(value, dict)
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict):
            yield from flatten(item, f"{name}.")
        elif isinstance(item, list) and any(isinstance(x, dict) for x in item):
            for x in item:
                yield from flatten(x, f"{name}[].")
        else:
            yield name


def _documented_fields(body: str) -> set[str]:
    return {backticked(row[0])[0] for row in table_rows(body, "| field |")}


def _json(*args: str | Path) -> dict[str, object]:
    code, out = run_json(*args)
    assert code == 0, out
    return out


def test_cli_doc_lists_exactly_the_json_fields(tmp_path: Path, make_key, make_trust, make_spec,
                                               offline_sigstore_signing: None, isolated_host) -> None:  # type: ignore[no-untyped-def]
    key, second = make_key("release"), make_key("second")
    trust = make_trust(key)
    bundle = tmp_path / "bundle"
    runs: dict[str, list[dict[str, object]]] = {
        "keygen": [_json("keygen", "fresh", "--out-dir", tmp_path / "k")],
        "build": [_json("build", spec := make_spec(), "--out", bundle, "--key", key.private, "--chunk-size", "1KiB")],
    }
    (bundle / "signatures" / "note.txt").write_text("not a signature\n")  # reported with keyid null
    runs["sign"] = [_json("sign", bundle, "--key", second.private)]
    runs["verify"] = [_json("verify", bundle, "--trust", trust),
                      _json("verify", bundle, "--trust", trust, "--chunk", bundle / "chunks" / "00000.bin")]
    runs["install"] = [_json("install", bundle, "--trust", trust, "--prefix", tmp_path / "prefix"),
                       _json("install", bundle, "--trust", trust, "--prefix", tmp_path / "hf-prefix",
                             "--hf-cache", tmp_path / "hf-cache")]
    runs["inspect"] = [_json("inspect", bundle), _json("inspect", bundle, "--trust", trust),
                       _json("inspect", _bundle_with_wheels(tmp_path / "wheels", key, make_spec))]
    runs["parity"] = [_json("parity", bundle, "--parity", "50%", "--key", key.private)]
    runs["build"].append(_json("build", make_spec(), "--out", tmp_path / "with-parity", "--key", key.private,
                               "--chunk-size", "1KiB", "--parity", "10%"))
    runs["verify"].append(_json("verify", bundle, "--trust", trust))  # with parity/
    runs["build"].append(_json("build", spec, "--check-against", bundle))  # an independent rebuild
    (bundle / "chunks" / "00000.bin").unlink()
    runs["repair"] = [_json("repair", bundle, "--trust", trust)]
    runs["sign"].append(_json("sign", bundle, "--sigstore", "--identity-token", "not-a-real-token"))
    runs["remove"], runs["prune"] = _removal_runs(tmp_path / "removal", key, trust, make_spec)
    _trust_root_runs(runs, tmp_path, key, second, make_key, bundle)
    _site_runs(runs, tmp_path, key, make_key, bundle, trust)
    untested = _registry_runs(runs, tmp_path, make_spec, key, trust)
    sections_of = _leaf_sections()
    for name, outputs in runs.items():
        seen = {_generic(field) for out in outputs for field in flatten(out)}
        assert seen == _documented_fields(sections_of[name]), name
    # every command a user runs is covered here, except `trust add-sigstore` (needs a sigstore trusted
    # root: test_cli_doc_lists_exactly_the_json_fields_of_add_sigstore)
    assert set(runs) | {"trust add-sigstore"} | untested == set(_leaf_commands())


def _registry_runs(runs: dict[str, list[dict[str, object]]], tmp_path: Path, make_spec: Callable[..., Path],
                   key: KeyPair, trust: Path) -> set[str]:
    """``push`` and ``pull`` against a real registry (docs/oci.md); without docker-registry on this
    machine they are left out (returned), and tests/oci skips with the reason."""
    from oci_testing import have_registry, start_registry

    if have_registry():
        return {"push", "pull"}
    bundle = tmp_path / "for-registry"
    _json("build", make_spec(version="7.0.0"), "--out", bundle, "--key", key.private, "--chunk-size", "1KiB")
    registry = start_registry(tmp_path / "registry", tls=False)
    try:
        ref = registry.url("docs/demo")
        runs["push"] = [_json("push", bundle, ref, "--plain-http")]
        runs["pull"] = [_json("pull", ref, "--trust", trust, "--out", tmp_path / "pulled", "--plain-http")]
    finally:
        registry.stop()
    return set()


def _removal_runs(work: Path, key: KeyPair, trust: Path, make_spec: Callable[..., Path]
                  ) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Five versions installed; 1.0.0 removed, then 2.0.0 with --hf-cache; 3.0.0 pruned, then 4.0.0 with --hf-cache."""
    prefix = work / "prefix"
    for version in ("1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0"):
        _json("build", make_spec(version=version), "--out", work / version, "--key", key.private)
        _json("install", work / version, "--trust", trust, "--prefix", prefix)
    hf = ("--hf-cache", work / "hf-cache")
    return ([_json("remove", "--prefix", prefix, "demo", "1.0.0"), _json("remove", "--prefix", prefix, "demo", "2.0.0", *hf)],
            [_json("prune", "--prefix", prefix, "--keep", "2"), _json("prune", "--prefix", prefix, "--keep", "1", *hf)])


# Objects keyed by a name (a role, a bundle): the doc names such a key with a placeholder.
_MAP_KEYS = ((re.compile(r"^roles\.[a-z]+\."), "roles.<role>."), (re.compile(r"^state\.bundles\.[^.]+\."), "state.bundles.<name>."))


def _bundle_with_wheels(folder: Path, key: KeyPair, make_spec: Callable[..., Path]) -> Path:
    """A bundle whose SBOM lists wheels (inspect's packages[]), built without pip (tests/support/sbom_testing.py)."""
    from gapship.bundler.build import build
    from gapship.bundler.spec import load_spec
    from sbom_testing import three_wheels

    build(load_spec(make_spec()), out=folder / "bundle", key=key.key, chunk_size=4096,
          dependencies=three_wheels(folder))
    return folder / "bundle"


def _generic(field: str) -> str:
    for pattern, placeholder in _MAP_KEYS:
        field = pattern.sub(placeholder, field)
    return field


@pytest.fixture
def offline_sigstore_signing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sign --sigstore`` needs Fulcio, Rekor and an OIDC identity; what the doc describes is the
    command's output, so the network step is replaced by one that returns what it would."""
    from gapship.bundler.cli import sign as bundler_cli
    from gapship.bundler.sign import SigstoreSignature
    from gapship.installer.formats.manifest import Manifest

    def fake(bundle: Path, *, identity_token: str | None = None,
             interactive: bool = False) -> tuple[SigstoreSignature, Manifest]:
        assert identity_token
        manifest = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
        return SigstoreSignature(file="signatures/0123456789abcdef.sigstore.json",
                                 identity="https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main",
                                 issuer="https://token.actions.githubusercontent.com"), manifest

    monkeypatch.setattr(bundler_cli, "sign_bundle_sigstore", fake)


def _trust_root_runs(runs: dict[str, list[dict[str, object]]], tmp_path: Path, key: KeyPair, second: KeyPair,
                     make_key: Callable[[str], KeyPair], bundle: Path) -> None:
    """Every connected-side ``trust`` command on one authority directory, then a site catching up."""
    root, auth = make_key("root"), make_key("auth")
    authority, site = tmp_path / "authority", tmp_path / "site-trust"
    sign_with = ("--sign-with", root.private)
    runs["trust init"] = [_json("trust", "init", "--trust", authority, "--root-key", root.public, "--release-key",
                                key.public, "--authorize-key", auth.public, *sign_with)]
    shutil.copytree(authority, site)  # the site's copy, at root v1
    runs["trust add-key"] = [_json("trust", "add-key", "--trust", authority, second.public, *sign_with)]
    runs["trust set-role"] = [_json("trust", "set-role", "--trust", authority, "--role", "release",
                                    "--require-algorithms", "ed25519", *sign_with)]
    runs["trust remove-key"] = [_json("trust", "remove-key", "--trust", authority, "second", *sign_with)]
    runs["trust reset-floor"] = [_json("trust", "reset-floor", "--trust", authority, "--bundle", "demo",
                                       "--from", "1.0.0", "--to", "0.5.0", *sign_with)]
    runs["trust renew"] = [_json("trust", "renew", "--trust", authority, "--expires", "30d", *sign_with)]
    runs["trust attach"] = [_json("trust", "attach", bundle, "--trust", authority)]
    runs["trust update"] = [_json("trust", "update", "--trust", site, authority)]


def _site_runs(runs: dict[str, list[dict[str, object]]], tmp_path: Path, key: KeyPair,
               make_key: Callable[[str], KeyPair], bundle: Path, legacy_trust: Path) -> None:
    """A site host: authorizations, verify and install under a site file, status, trust show, audit."""
    authority, prefix, log = tmp_path / "authority", tmp_path / "site-prefix", tmp_path / "audit.jsonl"
    auth = tmp_path / "keys" / "auth.key"
    site = tmp_path / "site.toml"
    site.write_text('site_id = "test-site"\nsafeguards = ["inference-audit-log"]\n')
    digest = _json("verify", bundle, "--trust", authority)["manifest_digest"]
    runs["authorize"] = [
        _json("authorize", "--site", "test-site", "--bundle-name", "demo", "--versions", ">=1,<2", "--expires",
              "30d", "--require", "inference-audit-log", "--key", auth, "--out", tmp_path / "auth-1"),
        _json("authorize", "--site", "test-site", "--manifest-digest", str(digest), "--expires", "30d",
              "--key", auth, "--out", bundle),  # carried by the bundle, under authorizations/
    ]
    host = ("--trust", authority, "--site-config", site, "--audit-log", log, "--authorization", tmp_path / "auth-1")
    runs["verify"].append(_json("verify", bundle, *host))
    # The second install is let in by the root's floor reset (1.0.0 -> 0.5.0), which the state logs.
    runs["install"] += [_json("install", bundle, "--prefix", prefix, *host),
                        _json("install", bundle, "--prefix", prefix, *host)]
    broken = prefix / "demo" / "0.9.0"
    broken.mkdir()
    (broken / "receipt.json").write_text("{")  # listed with a problem
    old = prefix / "demo" / "0.8.0"  # a receipt from before bundle_expires, and no manifest.json beside it
    old.mkdir()
    receipt = json.loads((prefix / "demo" / "current" / "receipt.json").read_bytes())
    (old / "receipt.json").write_text(json.dumps({k: v for k, v in receipt.items() if k != "bundle_expires"}))
    (old / "sbom").mkdir()
    (old / "sbom" / "bom.cdx.json").write_text("not an SBOM")  # listed with sbom_problem
    runs["status"] = [_json("status", "--prefix", prefix, "--site-config", site)]
    runs["trust show"] = [_json("trust", "show", "--trust", authority, "--prefix", prefix),
                          _json("trust", "show", "--trust", legacy_trust)]
    host_key = tmp_path / "host" / "host.key"
    runs["audit export"] = [_json("audit", "export", "--out", tmp_path / "export-1", "--log", log,
                                  "--host-key", host_key)]
    runs["audit verify"] = [_json("audit", "verify", "--log", log)]
    runs["audit export"].append(_json("audit", "export", "--out", tmp_path / "export-2", "--log", log,
                                      "--host-key", host_key))
    runs["audit verify"].append(_json("audit", "verify", "--export", tmp_path / "export-2", "--pubkey",
                                      host_key.with_suffix(".pub"), "--previous", tmp_path / "export-1"))
    runs["audit seal"] = [_json("audit", "seal", "--log", log)]
    # the same log as a transparency log: the installer's records above are its first leaves
    runs["audit checkpoint"] = [_json("audit", "checkpoint", "--log", log, "--out", tmp_path / "cp-1",
                                      "--host-key", host_key)]
    appended = CliRunner().invoke(cli, ["audit", "append", "--log", str(log), "--json"],
                                  input='{"kind": "inference", "request_id": "r-1"}\n', catch_exceptions=False)
    assert appended.exit_code == 0, appended.output
    runs["audit append"] = [json.loads(appended.stdout)]
    runs["audit export"].append(_json("audit", "export", "--log", log, "--since", tmp_path / "cp-1", "--out",
                                      tmp_path / "export-3", "--host-key", host_key))
    runs["audit verify"].append(_json("audit", "verify", "--export", tmp_path / "export-3", "--pubkey",
                                      host_key.with_suffix(".pub"), "--since", tmp_path / "cp-1",
                                      "--save-checkpoint", tmp_path / "cp-2"))


def test_cli_doc_lists_exactly_the_json_fields_of_add_sigstore(tmp_path: Path) -> None:
    pytest.importorskip("sigstore", reason="the gapship[sigstore] extra is not installed")
    from sigstore_assets import PRODUCTION, require_assets

    require_assets()
    out = _json("trust", "add-sigstore", "--trust", tmp_path / "trust", "--trusted-root", PRODUCTION.trusted_root,
                "--identity", PRODUCTION.identity, "--issuer", PRODUCTION.issuer, "--name", "release-ci")
    assert set(flatten(out)) == _documented_fields(_subcommand_sections()["trust add-sigstore"])


def test_cli_doc_lists_exactly_the_json_error_fields(tmp_path: Path, make_key, make_trust) -> None:
    trust = make_trust(make_key("release"))
    code, out = run_json("verify", tmp_path / "missing", "--trust", trust)
    assert code == 2
    assert out["ok"] is False
    body = sections(CLI_DOC.read_text())["2. Output, errors and progress"]
    assert set(flatten(out)) == _documented_fields(body)


def test_cli_usage_errors_are_text_without_json_as_documented(tmp_path: Path) -> None:
    result = run("verify", tmp_path)  # --trust is missing
    assert result.exit_code == 2
    assert "Missing option '--trust'" in result.stderr
    assert result.stdout == ""


def test_cli_usage_errors_are_a_json_error_with_json_as_documented(tmp_path: Path) -> None:
    # Since "CLI: with --json, usage errors are a JSON error object too": a script that asked for JSON
    # gets it, even when the parser is what refused the command line.
    result = run("verify", tmp_path, "--json")  # --trust is missing
    assert result.exit_code == 2
    out = json.loads(result.stdout)
    assert (out["ok"], out["error"]["code"], out["error"]["kind"]) == (False, 2, "usage")
    assert "Missing option '--trust'" in out["error"]["message"]
    body = sections(CLI_DOC.read_text())["2. Output, errors and progress"]
    assert "even when the parser refused the command line" in body


# -- (d) the two commands -----------------------------------------------------------------------------


def _commands(block: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_readme_gives_exactly_the_two_setup_commands() -> None:
    section = sections(README.read_text())["Two commands"]
    assert section.count("```") == 2  # one fenced block
    assert _commands(fenced_block_after(section, "")) == ["./demo.sh", "./test.sh"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert any(line.split()[0] == "./test.sh" for line in _commands(ci))


@pytest.mark.parametrize("script", ["demo.sh", "test.sh"])
def test_setup_commands_are_executable_strict_bash(script: str) -> None:
    path = ROOT / script
    assert os.access(path, os.X_OK)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text


# -- format.md against the code ---------------------------------------------------------------------


def test_format_doc_has_every_section_the_code_cites() -> None:
    headings = {re.sub(r"^[\d.]+ ", "", h) for h in re.findall(r"^#{2,3} (.+)$", FORMAT.read_text(), re.M)}
    cited = set()
    for source in [*(ROOT / "installer").rglob("*.py"), *(ROOT / "bundler").rglob("*.py")]:
        cited.update(re.findall(r'docs/format\.md,?\s+"([^"]+)"', source.read_text()))
    assert cited, "the code cites no section"
    assert cited <= headings, cited - headings


def test_feature_docs_have_every_section_the_code_cites() -> None:
    """Every ``docs/<page>.md, "Section"`` citation in the code names a heading of that page, or the
    start of one (``"Time"`` for "Time: expiry and a clock set back"); format.md's are exact, above."""
    missing = []
    for source in [*(ROOT / "installer").rglob("*.py"), *(ROOT / "bundler").rglob("*.py")]:
        for page, cited in re.findall(r'(docs/[a-z-]+\.md),?\s+"([^"]+)"', source.read_text()):
            headings = [re.sub(r"^[\d.]+ ", "", h) for h in re.findall(r"^#{2,3} (.+)$", (ROOT / page).read_text(), re.M)]
            if not any(h == cited or h.startswith((f"{cited}:", f"{cited} ", f"{cited},")) for h in headings):
                missing.append(f"{source.name} cites {page}, {cited!r}")
    assert not missing, missing


def test_docs_the_code_cites_exist() -> None:
    for source in [*(ROOT / "installer").rglob("*.py"), *(ROOT / "bundler").rglob("*.py")]:
        for page in re.findall(r"docs/[a-z-]+\.md", source.read_text()):
            assert (ROOT / page).is_file(), f"{source.name} cites {page}"


def test_format_doc_limits_are_the_code_constants() -> None:
    section = sections(FORMAT.read_text(), "### ")["4.7 Limits"]
    rows = {row[0]: row[1] for row in table_rows(section, "| what | cap |")}
    m, b, p = manifest_module, bundle_module, paths_module
    expected = {
        "`manifest.json`": [m.MAX_MANIFEST_BYTES],
        "entries in `signatures/`": [b.MAX_SIGNATURE_FILES],
        "one signature file": [b.MAX_SIGNATURE_BYTES],
        "chunks": [m.MAX_CHUNKS],
        "files (all components together)": [m.MAX_FILES],
        "components": [m.MAX_COMPONENTS],
        "`authorizations/`": [auth_module.MAX_AUTHORIZATIONS, auth_module.MAX_DOCUMENT_BYTES, b.MAX_SIGNATURE_FILES,
                              b.MAX_SIGNATURE_BYTES],
        "`signatures/`, `roots/` and `authorizations/` together": [b.MAX_UNVERIFIED_BYTES],
        "entries in `chunks/`": [b.MAX_CHUNK_ENTRIES],
        "one JSON value inside the manifest's lists": [kit_module.MAX_STREAMED_VALUE, kit_module.MAX_WALKED_MEMBERS],
        "header region before a file's data": [m.BLOCK, m.MAX_HEADER_REGION],
        "end-of-archive region": [m.END_OF_ARCHIVE, m.END_OF_ARCHIVE + m.RECORD],
        "path": [p.MAX_PATH_BYTES, p.MAX_DEPTH, p.MAX_COMPONENT_BYTES],
        "trust store": [trust_module.MAX_TRUSTED_KEYS, keys_module.MAX_KEY_FILE_BYTES],
    }
    for what, numbers in expected.items():
        # the cap's numbers come first in the cell; what follows (a unit, a section number) is prose
        assert re.findall(r"\d+", rows[what])[:len(numbers)] == [str(n) for n in numbers], what
    assert m.MIN_CHUNK_SIZE == 512 and m.MAX_CHUNK_SIZE == 16 * 1024**3  # "512 bytes to 16 GiB"
    assert m.MAX_SAFE_INTEGER == 2**53 - 1


def test_format_doc_names_the_accepted_algorithms_kinds_and_modes() -> None:
    text = FORMAT.read_text()
    from gapship.installer.crypto.hashing import HASH_ALGORITHMS

    assert "`sha256`, `sha384` or `sha512`" in text and HASH_ALGORITHMS == ("sha256", "sha384", "sha512")
    kinds = [backticked(row[0])[0] for row in table_rows(text, "| kind | root of its files |")]
    assert tuple(kinds) == manifest_module.COMPONENT_KINDS
    assert manifest_module.ALLOWED_MODES == (420, 493)
    assert "`420` (0644) or `493` (0755)" in text


# -- links between the pages ----------------------------------------------------------------------


PAGES = [README, ROOT / "keys" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Written by other work; the README links to them before they exist.
PLACEHOLDERS = {ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "security-report.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_point_at_existing_pages_and_headings(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if linked in PLACEHOLDERS and not linked.exists():
            continue
        assert linked.exists(), f"{page.name} links to missing {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            assert anchor in {slug(h) for h in headings}, f"{page.name} links to missing #{anchor}"
