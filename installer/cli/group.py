"""The ``gapship`` command group: error-to-exit mapping, output helpers, and the table of commands.

Each command lives in its own module beside this one (``verify.py``, ``install.py``, ...) and is
loaded on first use (:meth:`GapshipGroup.add_lazy`). Thin by design: a command parses options, calls
one library function and renders the result as text or, with ``--json``, as one JSON object on stdout.
Errors are caught once, in :class:`GapshipGroup`, and mapped to the exit codes of
:data:`~gapship.installer.errors.EXIT_CODES`. ``python -m gapship.installer`` runs this group alone,
which is all a site needs (docs/cli.md).

Every line meant for a person leaves through this module, and through :func:`escape` on its way:
:func:`emit`, :func:`warn`, the error printer and the progress bar. Names read from a bundle, a trust
directory or a prefix are attacker's text, and a terminal obeys what it is sent; so no command calls
``click.echo`` itself (tests/security/test_terminal_output.py checks that).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import __version__
from ..crypto.hashing import Progress
from ..errors import EXIT_CODES, GapshipError
from ..trust import TrustStore, VerifiedManifest

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
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _escaped_usage(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GapshipError as e:
            _fail(ctx, e.to_dict(), e.exit_code, details=e.details(), lines=e.detail_lines())
        except click.UsageError as e:
            if not _wants_json(ctx):
                raise _escaped_usage(e) from None
            _fail(ctx, {"code": 2, "kind": "usage", "message": e.format_message(), "subject": None, "hint": None}, 2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            _fail(ctx, {"code": 130, "kind": "interrupted", "message": "interrupted", "subject": None, "hint": None}, 130)
        except Exception as e:  # a bug: say so, keep the traceback for the report
            if os.environ.get("GAPSHIP_DEBUG"):
                for line in traceback.format_exc().splitlines():  # escaped too: it quotes the values
                    _write_line(line, err=True, backslashes=False)
            message = f"internal error: {type(e).__name__}: {e} (set GAPSHIP_DEBUG=1 for a traceback)"
            _fail(ctx, {"code": 1, "kind": "internal", "message": message, "subject": None, "hint": None}, 1)


def _fail(ctx: click.Context, error: dict[str, Any], code: int, *, details: dict[str, object] | None = None,
          lines: Iterable[str] = ()) -> None:
    """Report an error, escaped: its message and hint are the same one line in text and in ``--json``
    (docs/cli.md); ``subject`` and ``details`` keep the original strings, which JSON escapes."""
    error = {**error, "message": escape(error["message"], backslashes=False),
             "hint": escape(error["hint"], backslashes=False) if error.get("hint") else error.get("hint")}
    if _wants_json(ctx):
        _write_json({**(details or {}), "ok": False, "error": error})
    else:
        _write_line(f"gapship: error: {error['message']}", err=True, backslashes=False)
        if error["hint"]:
            _write_line(f"gapship: hint: {error['hint']}", err=True, backslashes=False)
        for line in lines:
            _write_line(f"gapship: {line}", err=True, backslashes=False)
    ctx.exit(code)


def _escaped_usage(e: click.UsageError) -> click.UsageError:
    """``e`` with its message escaped, for click to print as usual (a command line can name a bundle's
    file, or be pasted from one); a help screen (``NoArgsIsHelpError``) stays as it is."""
    message = e.format_message()
    safe = escape(message, backslashes=False)
    if safe == message or isinstance(e, click.exceptions.NoArgsIsHelpError):
        return e
    return click.UsageError(safe, ctx=e.ctx)


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

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=escape(label), file=sys.stderr,
              leave=False) as bar:

        def update(n: int) -> None:
            bar.update(n)

        yield update


def emit(as_json: bool, payload: dict[str, Any], lines: list[str]) -> None:
    """A command's result: ``payload`` as one JSON line with ``--json`` (the original strings, which
    JSON escapes), else ``lines`` on stdout, each through :func:`escape` (one entry, one line)."""
    if as_json:
        _write_json({"ok": True, **payload})
    else:
        for line in lines:
            _write_line(line)


def warn(text: str) -> None:
    """A ``gapship: warning: ...`` line on stderr, escaped (docs/cli.md, section 2)."""
    _write_line(f"gapship: warning: {text}", err=True)


def _write_line(line: str, *, err: bool = False, backslashes: bool = True) -> None:
    """The one writer of human text: every line goes through :func:`escape` here."""
    click.echo(escape(line, backslashes=backslashes), err=err)


def _write_json(payload: dict[str, Any]) -> None:
    """The one writer of ``--json``: one line, sorted keys; JSON escapes every string in it.

    Written as it is encoded, and an object with a ``to_dict()`` (verify's problems) is turned into
    its dict only when its turn comes: a failure that lists 100,000 chunks costs neither 100,000 dicts
    nor a copy of the whole line."""
    pieces: list[str] = []
    size = 0
    for piece in _JSON.iterencode(payload):
        pieces.append(piece)
        size += len(piece)
        if size >= _JSON_BLOCK:
            click.echo("".join(pieces), nl=False)
            pieces, size = [], 0
    click.echo("".join(pieces))


def _as_json(value: object) -> object:
    to_dict = getattr(value, "to_dict", None)
    if to_dict is None:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return to_dict()


_JSON = json.JSONEncoder(sort_keys=True, default=_as_json)
_JSON_BLOCK = 64 * 1024


def escape(text: str, *, backslashes: bool = True) -> str:
    """``text`` made safe to show on a terminal: the one function every human line goes through.

    A terminal obeys what it is sent: an escape sequence in a file name can erase a refusal and draw a
    fake ``OK ... signed by ...`` over it, and a bidi override can make a line read backwards
    (CVE-2021-42574). So every character Python does not call printable (``str.isprintable``) is
    written out in its string-literal notation: C0 and C1 controls and DEL (``\\x1b``, ``\\n``,
    ``\\x9b``), the format characters (``Cf``: bidi overrides and isolates such as ``\\u202e``,
    zero-width spaces and joiners), line and paragraph separators, spaces other than the ASCII space,
    lone surrogates (a file name that is not UTF-8: ``\\udcff``), private-use and unassigned code
    points. Letters of every script stay readable. A backslash becomes ``\\\\``, so the escaping
    can be undone: a name that holds the four characters ``\\x1b`` shows as ``\\\\x1b``.

    ``backslashes=False`` is for error messages and hints: the error hierarchy quotes the values it
    names with ``repr``, which has escaped them in this same notation already; doubling their
    backslashes would show a newline in a name as ``\\\\n``. Their other characters are escaped
    all the same, so a value a message names without ``repr`` reaches the terminal escaped too."""
    if text.isprintable() and not (backslashes and "\\" in text):
        return text  # the usual line, in one C-speed check
    return "".join(_escape_char(c, backslashes) for c in text)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str, backslashes: bool) -> str:
    if c.isprintable():
        return "\\\\" if backslashes and c == "\\" else c
    if c in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


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


class AliasedOption(click.Option):
    """An option whose help shows only its first name: the others are old spellings, still accepted
    so that no script breaks, but no longer taught (``hidden_aliases``)."""

    @property
    def hidden_aliases(self) -> list[str]:
        return self.opts[1:]

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        opts, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return f"'{self.opts[0]}'"  # "Missing option '--trust'", not the old spellings too


def trust_dir_option(*, help: str, required: bool = True, aliases: tuple[str, ...] = ()) -> Callable[[F], F]:
    """``--trust TRUSTDIR``: the one name of the trust directory in every command (docs/cli.md);
    ``aliases`` are the old spellings (``--dir`` in ``gapship trust ...``), accepted and hidden."""
    return click.option("--trust", *aliases, "trust_dir", cls=AliasedOption, required=required,
                        type=click.Path(path_type=Path), help=help)


trust_option = trust_dir_option(help="Trust directory: the site's root.json (or, legacy, its *.pub keys).")
bundle_argument = click.argument("bundle", type=click.Path(path_type=Path))


def trust_fields(verified: VerifiedManifest) -> dict[str, Any]:
    """The trust root that decided (docs/trust.md, "Commands"): its version (null in legacy mode) and
    the versions this bundle's roots/ brought in."""
    return {"root_version": verified.root_version, "root_updates": list(verified.root_updates)}


def trust_lines(verified: VerifiedManifest, *, persisted: bool) -> list[str]:
    if not verified.root_updates:
        return []
    done = "updated" if persisted else "would update (verify writes nothing; install does)"
    return [f"trust root {done} to v{verified.root_updates[-1]}"]


def main() -> None:
    cli(prog_name="gapship")


# Every command lives in its own module, loaded on first use (GapshipGroup.add_lazy).
for _name in ("verify", "install", "inspect", "status", "audit", "repair", "prune", "remove"):
    cli.add_lazy(_name, f"{__package__}.{_name}")
for _name in ("push", "pull"):  # OCI registries (docs/oci.md)
    cli.add_lazy(_name, f"{__package__}.{_name}")
cli.add_lazy("audit", f"{__package__}.audit_tlog")  # `audit append`, `audit checkpoint` (docs/audit.md)
cli.add_lazy("trust", f"{__package__}.trust")  # `gapship trust show`, `update`, `add-sigstore`
