"""The one error hierarchy of gapship.

Every error a user can meet is a subclass of :class:`GapshipError`. Each class is named after who must
act, carries a one-line message that names the bad thing, and maps to exactly one documented exit code
(the table lives in :data:`EXIT_CODES` and is rendered into the CLI's ``--help`` and the README).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar


class GapshipError(Exception):
    """Base class: a one-line ``message``, the ``subject`` it is about, and a ``hint`` for the user."""

    exit_code: ClassVar[int] = 1
    kind: ClassVar[str] = "internal"

    def __init__(self, message: str, *, subject: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.subject = subject
        self.hint = hint

    def to_dict(self) -> dict[str, object]:
        """The structured form used by ``--json`` (documented in docs/cli.md)."""
        return {
            "code": self.exit_code,
            "kind": self.kind,
            "message": self.message,
            "subject": self.subject,
            "hint": self.hint,
        }

    def details(self) -> dict[str, object]:
        """Fields the ``--json`` failure object carries beside ``error`` (docs/cli.md): none, unless the
        error stands for several problems found in one pass (``verify``'s ``problems``)."""
        return {}

    def detail_lines(self) -> Iterable[str]:
        """The text mode's lines for :meth:`details`, printed after the error and its hint."""
        return ()


class UsageError(GapshipError):
    """The command line, a spec file or a key file given by the user is wrong."""

    exit_code = 2
    kind = "usage"


class IntegrityError(GapshipError):
    """A hash or size mismatch; a chunk missing, truncated, extended or extra."""

    exit_code = 3
    kind = "integrity"


class TrustError(GapshipError):
    """No acceptable signature: unknown, revoked or bad keys, malformed signature files."""

    exit_code = 4
    kind = "trust"


class SigstoreUnavailableError(TrustError):
    """A sigstore signature was found but the optional extra ``gapship[sigstore]`` is not installed:
    the signature is reported as not checked and does not count (docs/sigstore.md)."""


class SigstoreSignatureError(TrustError):
    """A sigstore signature was checked and refused. ``reason`` names the check that failed:
    ``malformed``, ``identity``, ``issuer``, ``chain`` or ``signature`` (docs/sigstore.md)."""

    def __init__(self, message: str, *, reason: str, subject: str | None = None) -> None:
        super().__init__(message, subject=subject)
        self.reason = reason


class PolicyError(GapshipError):
    """The bundle is authentic but this host must not install it (version, expiry, site)."""

    exit_code = 5
    kind = "policy"


class UnsafeContentError(GapshipError):
    """The bundle's content would escape or abuse the target (paths, links, modes, tar tricks),
    or its manifest is malformed."""

    exit_code = 6
    kind = "unsafe"


class HostError(GapshipError):
    """The host cannot do it now: disk full, permission denied, target busy."""

    exit_code = 7
    kind = "environment"


EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "internal error (a bug: please report it)"),
    (UsageError.exit_code, "usage: bad arguments, spec, policy or key file"),
    (IntegrityError.exit_code, "integrity: a hash or size mismatch; a chunk missing, truncated or extra"),
    (TrustError.exit_code, "signature or trust: no valid signature from a trusted key"),
    (PolicyError.exit_code, "policy refusal: e.g. already installed, expired, rollback, site"),
    (UnsafeContentError.exit_code, "unsafe content: a malformed manifest or a hostile path, link or mode"),
    (HostError.exit_code, "environment: disk full, permission denied, target busy"),
)
