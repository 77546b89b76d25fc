"""The disconnected side's commands: ``verify``, ``install``, ``inspect`` (docs/cli.md).

Thin by design: each command parses options, calls one library function and renders the result as
text or, with ``--json``, as one JSON object on stdout. Errors are caught once, in :class:`GapshipGroup`,
and mapped to the exit codes of :data:`~gapship.installer.errors.EXIT_CODES`.
``python -m gapship.installer`` runs this group alone, which is all a site needs.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from ._cli_host import HostContext, host_options
from .bundle import read_raw_bundle
from .errors import EXIT_CODES, GapshipError
from .hashing import Progress
from .state import HostState
from .trust import Allowances, SignatureCheck, TrustStore, VerifiedManifest, parse_unverified, verify_manifest
from .verify import verify_chunk_file, verify_chunks

F = TypeVar("F", bound=Callable[..., Any])
JSON_KEY = "gapship.json"


def _exit_code_help() -> str:
    rows = "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES)
    return f"\b\nExit codes:\n{rows}"


class GapshipGroup(click.Group):
    """Catches every error once: a one-line message on stderr (or a JSON object on stdout with
    ``--json``) and the error's documented exit code.

    Commands can also be *lazy* (:meth:`add_lazy`): a name and the modules that register it (or, for
    a group such as ``trust``, add sub-commands to it) when imported. They are imported only when the
    command is looked up, so ``gapship verify`` does not pay the start-up time of ``gapship build`` and
    its imports; ``--help`` looks every command up and so lists them all."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, list[str]] = {}

    def add_lazy(self, name: str, *modules: str) -> None:
        """Import ``modules`` (absolute names), in order, before command ``name`` is first used."""
        self.lazy.setdefault(name, []).extend(modules)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in self.lazy.get(cmd_name, ()):
            importlib.import_module(module)  # a no-op once imported
        return super().get_command(ctx, cmd_name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Seen before any sub-command parses its options, so that a usage error in them can still
        # be reported as JSON to a script that asked for JSON.
        if "--json" in args:
            ctx.meta[JSON_KEY] = True
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GapshipError as e:
            _fail(ctx, e.to_dict(), e.exit_code)
        except click.UsageError as e:
            if not _wants_json(ctx):
                raise
            _fail(ctx, {"code": 2, "kind": "usage", "message": e.format_message(), "subject": None, "hint": None}, 2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            _fail(ctx, {"code": 130, "kind": "interrupted", "message": "interrupted", "subject": None, "hint": None}, 130)
        except Exception as e:  # a bug: say so, keep the traceback for the report
            if os.environ.get("GAPSHIP_DEBUG"):
                traceback.print_exc()
            message = f"internal error: {type(e).__name__}: {e} (set GAPSHIP_DEBUG=1 for a traceback)"
            _fail(ctx, {"code": 1, "kind": "internal", "message": message, "subject": None, "hint": None}, 1)


def _fail(ctx: click.Context, error: dict[str, Any], code: int) -> None:
    if _wants_json(ctx):
        click.echo(json.dumps({"ok": False, "error": error}, sort_keys=True))
    else:
        click.echo(f"gapship: error: {error['message']}", err=True)
        if error.get("hint"):
            click.echo(f"gapship: hint: {error['hint']}", err=True)
    ctx.exit(code)


def _wants_json(ctx: click.Context) -> bool:
    return bool(ctx.find_root().meta.get(JSON_KEY))


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.find_root().meta[JSON_KEY] = True
    return value


json_option = click.option("--json", "as_json", is_flag=True, is_eager=True, callback=_set_json,
                           help="Print one JSON object on stdout (fields in docs/cli.md).")


def output_options(f: F) -> F:
    """``--json`` and ``--progress/--no-progress`` for every command that reports."""
    f = click.option("--progress/--no-progress", default=None,
                     help="Show a progress bar on stderr (default: when stderr is a terminal).")(f)
    return json_option(f)


@contextmanager
def progress_bar(total: int, label: str, enabled: bool | None) -> Iterator[Progress]:
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield lambda _n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr,
              leave=False) as bar:

        def update(n: int) -> None:
            bar.update(n)

        yield update


def emit(as_json: bool, payload: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps({"ok": True, **payload}, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def signer_names(trust: TrustStore, signers: tuple[str, ...]) -> str:
    return ", ".join(f"{trust.names.get(k, '?')} ({k[:16]})" for k in signers)


@click.group(cls=GapshipGroup, epilog=_exit_code_help(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gapship")
def cli() -> None:
    """gapship: carry signed ML deployments across an air gap.

    Verify and install bundles on a disconnected host; on the connected side, build and sign them.
    """


trust_option = click.option("--trust", "trust_dir", required=True, type=click.Path(path_type=Path),
                            help="Trust directory: the site's root.json (or, legacy, its *.pub keys).")
bundle_argument = click.argument("bundle", type=click.Path(path_type=Path))


@cli.command()
@bundle_argument
@trust_option
@click.option("--chunk", "chunk_files", multiple=True, type=click.Path(path_type=Path),
              help="Check only this chunk file against the signed manifest (repeatable).")
@output_options
@host_options
def verify(bundle: Path, trust_dir: Path, chunk_files: tuple[Path, ...], as_json: bool, progress: bool | None,
           host: HostContext) -> None:
    """Check BUNDLE's signatures, then every chunk (or only --chunk files), then, on a site host,
    the bundle's site policy."""
    trust = TrustStore.from_dir(trust_dir)
    raw = read_raw_bundle(bundle)
    verified = host.note(verify_manifest(raw, trust=trust))
    m = verified.manifest
    if chunk_files:
        checked = [verify_chunk_file(path, verified) for path in chunk_files]
        count, size = len(checked), sum(c.size for c in checked)
    else:
        with progress_bar(m.payload_size, "verify", progress) as bar:
            report = verify_chunks(bundle, verified, progress=bar)
        count, size = report.chunks, report.bytes
        host.decide(bundle, verified, trust_dir=trust_dir)
    scope = "chunk" if chunk_files else "bundle"
    emit(as_json, {
        "bundle": {"name": m.name, "version": m.version},
        "manifest_digest": verified.digest,
        "signers": list(verified.signers),
        "signatures": [c.to_dict() for c in verified.checks],
        "scope": scope,
        "chunks_checked": count,
        "chunks_total": len(m.chunks),
        "bytes_checked": size,
        "site": host.summary(),
        **trust_fields(verified),
    }, [
        f"OK {m.name} {m.version}: signed by {signer_names(verified.trust or trust, verified.signers)}",
        f"OK {count} of {len(m.chunks)} chunk(s) verified ({human_size(size)})",
        *trust_lines(verified, persisted=False),
        *host.lines(),
    ])


@cli.command()
@bundle_argument
@trust_option
@click.option("--prefix", required=True, type=click.Path(path_type=Path), help="Install root.")
@click.option("--allow-reinstall", is_flag=True,
              help="Install a version equal to the highest installed one (logged).")
@click.option("--allow-downgrade", is_flag=True,
              help="Install a version older than the highest installed one (logged; the floor stays).")
@click.option("--python", "python", metavar="PYTHON", default=None,
              help="Interpreter for the bundle's dependencies venv (default: the one running gapship).")
@output_options
@host_options
def install(bundle: Path, trust_dir: Path, prefix: Path, allow_reinstall: bool, allow_downgrade: bool,
            python: str | None, as_json: bool, progress: bool | None, host: HostContext) -> None:
    """Verify BUNDLE and install it under PREFIX/<name>/<version>, then switch PREFIX/<name>/current.

    Bundled Python dependencies go into PREFIX/<name>/<version>/venv, installed offline. Refuses
    (exit 5) a version at or below the highest one installed, an expired bundle, or a host clock
    earlier than a signing time already accepted. On a site host, the bundle's site policy is
    enforced first (docs/safeguards.md). New trust roots the bundle carries are written to the trust
    directory as soon as they verify."""
    from .install import install as install_bundle  # here, not at the top: `verify` does not need it

    trust = TrustStore.from_dir(trust_dir)
    state = HostState.for_prefix(prefix)
    allow = Allowances(reinstall=allow_reinstall, downgrade=allow_downgrade)
    verified = host.note(verify_manifest(read_raw_bundle(bundle), trust=trust, state=state.load(), allow=allow,
                                         persist_root=trust.persist))
    decision = host.decide(bundle, verified, trust_dir=trust_dir)
    with progress_bar(verified.manifest.payload_size, "install", progress) as bar:
        result = install_bundle(bundle, verified, prefix=prefix, progress=bar, state=state, site=decision,
                                python=python)
    was = f"; was {result.previous}" if result.previous and result.previous != result.version else ""
    verb = "installed" if result.status == "installed" else "already installed"
    if not as_json:
        for override in result.overrides:
            click.echo(f"gapship: warning: --allow-{override} was needed; logged in {state.path}", err=True)
    venv = [f"dependencies in {result.venv}"] if result.venv is not None else []
    emit(as_json, {**result.to_dict(), **trust_fields(verified), "site": host.summary()}, [
        f"{verb} {result.name} {result.version} at {result.path} ({result.files} files, {human_size(result.bytes)})",
        *venv,
        f"current -> {result.version}{was}; signed by {signer_names(verified.trust or trust, result.signers)}",
        *trust_lines(verified, persisted=True),
        *host.lines(),
    ])


def trust_fields(verified: VerifiedManifest) -> dict[str, Any]:
    """The trust root that decided (docs/trust.md, "Commands"): its version (null in legacy mode) and
    the versions this bundle's roots/ brought in."""
    return {"root_version": verified.root_version, "root_updates": list(verified.root_updates)}


def trust_lines(verified: VerifiedManifest, *, persisted: bool) -> list[str]:
    if not verified.root_updates:
        return []
    done = "updated" if persisted else "would update (verify writes nothing; install does)"
    return [f"trust root {done} to v{verified.root_updates[-1]}"]


@cli.command()
@bundle_argument
@click.option("--trust", "trust_dir", type=click.Path(path_type=Path),
              help="Also say which signatures are valid for this trust directory.")
@json_option
def inspect(bundle: Path, trust_dir: Path | None, as_json: bool) -> None:
    """Show what BUNDLE holds, who signed it and its sizes. Does NOT verify anything unless --trust."""
    raw = read_raw_bundle(bundle)
    m = parse_unverified(raw)
    checks: tuple[SignatureCheck, ...] = ()
    if trust_dir is not None:
        from .trust import check_signatures

        checks = check_signatures(raw.manifest_bytes, raw.signatures, TrustStore.from_dir(trust_dir))
    signatures = [c.to_dict() for c in checks] if checks else [{"file": n} for n in sorted(raw.signatures)]
    payload = {
        "verified": False,
        "bundle": {"name": m.name, "version": m.version},
        "created": m.created,
        "expires": m.expires,
        "format_version": m.format_version,
        "hash_algorithm": m.hash_algorithm,
        "chunk_size": m.chunk_size,
        "chunks": len(m.chunks),
        "payload_size": m.payload_size,
        "components": [{"kind": c.kind, "name": c.name, "files": len(c.files), "bytes": c.size} for c in m.components],
        "signatures": signatures,
    }
    lines = [
        f"{m.name} {m.version} (format v{m.format_version}, created {m.created})",
        f"payload: {human_size(m.payload_size)} in {len(m.chunks)} chunk(s) of {human_size(m.chunk_size)}, {m.hash_algorithm}",
        *(f"  {c.kind:<12} {c.name:<24} {len(c.files):>6} files {human_size(c.size):>12}" for c in m.components),
        "signatures:",
        *(f"  {s['file']}  {s.get('status', '')}" for s in signatures),
    ]
    if not checks:
        lines.append("(not verified: inspect reads the manifest as it is; run `gapship verify` to check it)")
    emit(as_json, payload, lines)


def main() -> None:
    cli(prog_name="gapship")


# The other commands live in their own modules, loaded on first use (GapshipGroup.add_lazy).
cli.add_lazy("trust", f"{__package__}.trust_cli",  # `gapship trust show`, `update`
             f"{__package__}._cli_sigstore")  # `gapship trust add-sigstore`, docs/sigstore.md
cli.add_lazy("audit", f"{__package__}._cli_audit")
cli.add_lazy("status", f"{__package__}._cli_status")
