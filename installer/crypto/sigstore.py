"""Sigstore signatures over the manifest, verified offline (docs/sigstore.md).

A sigstore signature is the sigstore bundle JSON over the exact manifest bytes, stored as
``signatures/<name>.sigstore.json`` beside the Ed25519 ones (docs/format.md, "Signatures"; the v1
format is extended, not changed). A site pins each sigstore signer in its trust directory as
``TRUSTDIR/sigstore/<signer>.toml``: a certificate identity, an OIDC issuer and a sigstore
``trusted_root.json`` file in the same folder. Verification never touches the network.

Never ``Verifier.production(offline=True)``: that trusts whatever ``trusted_root.json`` sits in the local
TUF cache, unverified. The verifier here is built from the pinned file only.

sigstore is the optional extra ``gapship[sigstore]``, imported lazily: without it
:func:`verify_sigstore_signature` raises :class:`SigstoreUnavailableError` and the signature does not
count. Every exception from sigstore is wrapped here, at the boundary.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HostError, SigstoreSignatureError, SigstoreUnavailableError, UsageError
from ..kit import Refusal, parse_toml, read_bounded
from ..host.atomic import atomic_file

if TYPE_CHECKING:
    from cryptography.x509 import Certificate
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier

SIGSTORE_SUFFIX = ".sigstore.json"
SIGSTORE_DIR = "sigstore"  # TRUSTDIR/sigstore/<signer>.toml
SIGNER_PREFIX = "sigstore:"  # a verified signer is counted as "sigstore:<signer>"
PIN_SUFFIX = ".toml"
PIN_KEYS = frozenset({"identity", "issuer", "trusted_root"})
MAX_SIGSTORE_SIGNERS = 64
MAX_PIN_BYTES = 16 * 1024
MAX_TRUSTED_ROOT_BYTES = 1024 * 1024
MAX_DETAIL = 240
UNAVAILABLE = "sigstore signature could not be checked: install gapship[sigstore]"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a signer name
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a trusted root file beside the pin
# Fulcio's certificate fields (sigstore OID registry): the SAN other-name used for identities that are
# neither an e-mail nor a URI, and the OIDC issuer extension that policy.OIDCIssuer checks.
_OTHERNAME_OID = "1.3.6.1.4.1.57264.1.7"
_OIDC_ISSUER_OID = "1.3.6.1.4.1.57264.1.1"
# Failures that mean "not from a signer this site pinned" rather than "a forged or broken signature".
UNTRUSTED_REASONS = frozenset({"identity", "issuer", "chain"})


@dataclass(frozen=True)
class SigstoreSigner:
    """One pinned sigstore signer: who (certificate identity and OIDC issuer) under which root."""

    name: str
    trusted_root: Path
    identity: str
    issuer: str

    @property
    def signer_id(self) -> str:
        """How a verified signature by this signer is counted and recorded (once per signer)."""
        return f"{SIGNER_PREFIX}{self.name}"

    @property
    def description(self) -> str:
        return f"{self.identity} (issuer {self.issuer})"


@dataclass(frozen=True)
class SigstoreOutcome:
    """What was found about one ``*.sigstore.json`` file, for :class:`~gapship.installer.trust.SignatureCheck`."""

    signer: str | None  # the signer_id it verified for, when valid
    status: str  # valid | untrusted | invalid | unchecked
    detail: str


def is_sigstore_signature_file(name: str) -> bool:
    return name.endswith(SIGSTORE_SUFFIX) and len(name) > len(SIGSTORE_SUFFIX)


def verify_sigstore_signature(manifest_bytes: bytes, bundle_json: bytes, *, trusted_root: Path, identity: str,
                              issuer: str, subject: str = "sigstore signature") -> None:
    """Return if ``bundle_json`` is a sigstore signature over ``manifest_bytes`` by ``identity`` at
    ``issuer``, chaining to ``trusted_root``; raise :class:`SigstoreSignatureError` naming the failed
    check otherwise. Offline: nothing but the arguments is consulted.

    Raises :class:`SigstoreUnavailableError` when the extra is missing and :class:`UsageError` when the
    pin itself is unusable (empty identity or issuer, unreadable or invalid trusted root)."""
    check_pin_values(identity, issuer, source=subject)
    root = load_trusted_root(trusted_root)
    bundle = _load_bundle(bundle_json, subject=subject)
    verifier = _verifier(root, source=trusted_root)
    pin = _PinnedIdentity(identity=identity, issuer=issuer)
    try:
        verifier.verify_artifact(manifest_bytes, bundle, pin)
    except Exception as e:  # any failure inside sigstore on untrusted input is a refusal
        raise _classify(e, pin, subject=subject, root=trusted_root) from e


def check_sigstore_file(name: str, data: bytes, manifest_bytes: bytes,
                        signers: Sequence[SigstoreSigner]) -> SigstoreOutcome:
    """Evaluate one ``signatures/*.sigstore.json`` file against every pinned signer.

    The file name is not trusted to say who signed: each pin is tried, and the first whose identity,
    issuer and trusted root accept the signature is the signer. A file counts for one signer at most."""
    if not signers:
        return SigstoreOutcome(None, "untrusted", "no sigstore signer is pinned in the trust store")
    subject = f"signatures/{name}"
    refusals: list[tuple[SigstoreSigner, SigstoreSignatureError]] = []
    for signer in signers:
        try:
            verify_sigstore_signature(manifest_bytes, data, trusted_root=signer.trusted_root,
                                      identity=signer.identity, issuer=signer.issuer, subject=subject)
        except SigstoreUnavailableError as e:
            return SigstoreOutcome(None, "unchecked", e.message)
        except SigstoreSignatureError as e:
            if e.reason == "malformed":  # the same for every pin
                return SigstoreOutcome(None, "invalid", e.message)
            refusals.append((signer, e))
            continue
        return SigstoreOutcome(signer.signer_id, "valid", signer.description)
    return _refused(refusals)


def _refused(refusals: list[tuple[SigstoreSigner, SigstoreSignatureError]]) -> SigstoreOutcome:
    """A pin whose identity matched but whose signature failed makes the file "invalid" (a forgery or
    damage); when every pin refused who signed it, the file is "untrusted", like an unknown key."""
    forged = [e for _, e in refusals if e.reason not in UNTRUSTED_REASONS]
    if forged:
        return SigstoreOutcome(None, "invalid", forged[0].message)
    if len(refusals) == 1:
        return SigstoreOutcome(None, "untrusted", refusals[0][1].message)
    reasons = ", ".join(f"{s.name}: {e.reason}" for s, e in refusals)
    return SigstoreOutcome(None, "untrusted", f"no pinned sigstore signer accepts it ({reasons})")


def check_pin_values(identity: str, issuer: str, *, source: str) -> None:
    """An empty issuer would make sigstore's ``Identity`` policy skip the issuer check altogether, so
    both values are required; control characters have no place in either."""
    for field, value in (("identity", identity), ("issuer", issuer)):
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{source}: sigstore {field} must be a non-empty string", subject=source)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise UsageError(f"{source}: sigstore {field} holds a control character", subject=source)


def _require_sigstore() -> None:
    try:
        import sigstore.errors  # noqa: F401
        import sigstore.models  # noqa: F401
        import sigstore.verify  # noqa: F401
    except ImportError as e:
        raise SigstoreUnavailableError(UNAVAILABLE, subject="sigstore",
                                       hint="pip install 'gapship[sigstore]'") from e


def load_trusted_root(path: Path, *, source: Path | None = None) -> TrustedRoot:
    """Parse a pinned sigstore ``trusted_root.json``; a broken pin is the site's error (exit 2).
    ``source`` is the name to use in messages when ``path`` is a copy."""
    _require_sigstore()
    from sigstore.models import TrustedRoot

    shown = str(source or path)
    data = read_bounded(path, cap=MAX_TRUSTED_ROOT_BYTES, refuse=_refuse_trusted_root(shown), follow_symlinks=True)
    try:
        # What TrustedRoot.from_file does in sigstore 4.5, over the bytes read above: from_file would
        # open the path again, and could read a FIFO, or other bytes than were checked. The JSON is
        # sigstore's to parse (its own model and errors); any exception, RecursionError included, is
        # caught here. Imported here: the extra is optional.
        from sigstore_models.trustroot import v1 as trustroot_v1

        return TrustedRoot(trustroot_v1.TrustedRoot.from_json(data))
    except Exception as e:
        raise UsageError(f"{shown!r} is not a sigstore trusted root: {one_line(e)}", subject=shown) from e


def _refuse_trusted_root(shown: str) -> Callable[[Refusal], Exception]:
    def refuse(r: Refusal) -> Exception:
        if r.reason == "too-large":
            return UsageError(f"sigstore trusted root {shown!r} is over {MAX_TRUSTED_ROOT_BYTES} bytes", subject=shown)
        return UsageError(f"sigstore trusted root {shown!r} cannot be read: {r.strerror}", subject=shown)
    return refuse


def _verifier(root: TrustedRoot, *, source: Path) -> Verifier:
    from sigstore.verify import Verifier

    try:
        return Verifier(trusted_root=root)
    except Exception as e:
        raise UsageError(f"sigstore trusted root {str(source)!r} is unusable: {one_line(e)}", subject=str(source)) from e


def _load_bundle(data: bytes, *, subject: str) -> Bundle:
    from sigstore.models import Bundle

    try:
        return Bundle.from_json(data)
    except Exception as e:
        raise SigstoreSignatureError(f"{subject}: malformed sigstore bundle: {one_line(e)}", reason="malformed",
                                     subject=subject) from e


class _PinnedIdentity:
    """sigstore's own ``policy.Identity`` (OIDC issuer, then certificate SAN), wrapped only to learn
    which of the two refused, for the message. The decision stays sigstore's."""

    def __init__(self, *, identity: str, issuer: str) -> None:
        from sigstore.verify import policy

        self._issuer = policy.OIDCIssuer(issuer)
        self._identity = policy.Identity(identity=identity, issuer=issuer)
        self.identity, self.issuer = identity, issuer
        self.failed: str | None = None

    def verify(self, cert: Certificate) -> None:
        try:
            self._issuer.verify(cert)
        except Exception:
            self.failed = "issuer"
            raise
        try:
            self._identity.verify(cert)
        except Exception:
            self.failed = "identity"
            raise


def _classify(e: Exception, pin: _PinnedIdentity, *, subject: str, root: Path) -> SigstoreSignatureError:
    """Name the check that failed. Only the message depends on this: every path is a refusal."""
    from sigstore.errors import CertValidationError

    detail = one_line(e)
    if pin.failed == "issuer":
        return SigstoreSignatureError(f"{subject}: wrong OIDC issuer, the pin requires {pin.issuer!r} ({detail})",
                                      reason="issuer", subject=subject)
    if pin.failed == "identity":
        return SigstoreSignatureError(f"{subject}: wrong identity, the pin requires {pin.identity!r} ({detail})",
                                      reason="identity", subject=subject)
    if isinstance(e, CertValidationError):
        return SigstoreSignatureError(
            f"{subject}: certificate chain is not from the pinned trusted root {root.name} ({detail})",
            reason="chain", subject=subject)
    return SigstoreSignatureError(f"{subject}: bad signature over the manifest bytes ({detail})",
                                  reason="signature", subject=subject)


def certificate_identity(cert: Certificate) -> tuple[str, str]:
    """The identity and OIDC issuer of a Fulcio certificate, as sigstore's ``policy.Identity`` reads
    them (the first e-mail, URI or sigstore other-name SAN; extension 1.3.6.1.4.1.57264.1.1). Read
    WITHOUT verifying anything: for telling a signer what a site must pin, never for a decision."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        other = x509.ObjectIdentifier(_OTHERNAME_OID)
        names = [*san.get_values_for_type(x509.RFC822Name), *san.get_values_for_type(x509.UniformResourceIdentifier),
                 *(o.value.decode() for o in san.get_values_for_type(x509.OtherName) if o.type_id == other)]
        issuer = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(_OIDC_ISSUER_OID)).value
        if not names or not isinstance(issuer, x509.UnrecognizedExtension):
            raise ValueError("no identity SAN or OIDC issuer extension")
        return names[0], issuer.value.decode()
    except (ValueError, x509.ExtensionNotFound) as e:
        raise SigstoreSignatureError(f"sigstore certificate names no identity: {one_line(e)}", reason="malformed",
                                     subject="certificate") from e


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


# --- pins in a trust directory: TRUSTDIR/sigstore/<signer>.toml (docs/sigstore.md, "Pinning") ---

def load_sigstore_signers(trust_dir: Path) -> tuple[SigstoreSigner, ...]:
    """The sigstore signers pinned under ``trust_dir``; none when it has no ``sigstore/`` folder.
    Reading pins needs no sigstore: the extra is needed only to check a signature."""
    folder = trust_dir / SIGSTORE_DIR
    if not folder.is_dir():
        return ()
    pins = sorted(p for p in folder.iterdir() if p.name.endswith(PIN_SUFFIX))
    if len(pins) > MAX_SIGSTORE_SIGNERS:
        raise UsageError(f"{folder} holds over {MAX_SIGSTORE_SIGNERS} sigstore pins", subject=str(folder))
    signers = tuple(_load_pin(p) for p in pins)
    _refuse_duplicate_identities(signers)
    return signers


def _load_pin(path: Path) -> SigstoreSigner:
    source = f"{path.parent.name}/{path.name}"
    name = path.name[: -len(PIN_SUFFIX)]
    if not _NAME.fullmatch(name):
        raise UsageError(f"{source}: signer name {name!r} is not [A-Za-z0-9._-]", subject=source)
    def refuse(r: Refusal) -> Exception:
        if r.reason == "too-large":
            return UsageError(f"{source}: pin file over {MAX_PIN_BYTES} bytes", subject=source)
        return UsageError(f"{source}: cannot read the pin: {r.strerror}", subject=source)

    raw = read_bounded(path, cap=MAX_PIN_BYTES, refuse=refuse, follow_symlinks=True)
    data = parse_toml(raw, source=source, error=UsageError, invalid="{source}: not a valid TOML pin: {detail}",
                      detail=one_line)
    unknown = sorted(set(data) - PIN_KEYS)
    missing = sorted(PIN_KEYS - set(data))
    if unknown or missing:
        raise UsageError(f"{source}: pin needs exactly {sorted(PIN_KEYS)} (missing {missing}, unknown {unknown})",
                         subject=source)
    identity, issuer, root = data["identity"], data["issuer"], data["trusted_root"]
    check_pin_values(identity, issuer, source=source)
    return SigstoreSigner(name=name, trusted_root=_pinned_root_path(path.parent, root, source=source),
                          identity=identity, issuer=issuer)


def _pinned_root_path(folder: Path, value: object, *, source: str) -> Path:
    """The trusted root is a file in the pin's own folder: a bare name, nothing that could point out."""
    if not isinstance(value, str) or not _FILE_NAME.fullmatch(value):
        raise UsageError(f"{source}: trusted_root must be a file name in the same folder", subject=source)
    path = folder / value
    if not path.is_file():
        raise UsageError(f"{source}: trusted root {value!r} is missing", subject=source)
    return path


def _refuse_duplicate_identities(signers: Sequence[SigstoreSigner]) -> None:
    """Two pins for one identity would let one signature count twice toward the threshold."""
    seen: dict[tuple[str, str], str] = {}
    for s in signers:
        other = seen.setdefault((s.identity, s.issuer), s.name)
        if other != s.name:
            raise UsageError(f"sigstore pins {other!r} and {s.name!r} name the same identity {s.identity!r}",
                             subject=f"{SIGSTORE_DIR}/{s.name}{PIN_SUFFIX}")


def default_signer_name(identity: str) -> str:
    """A readable, file-safe name from the identity, with a short hash so two identities never meet."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", identity.split("://", 1)[-1])
    slug = re.sub(r"[-._]*-[-._]*", "-", slug)[:40].strip("-._") or "signer"
    return f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def pin_sigstore_signer(trust_dir: Path, *, trusted_root: Path, identity: str, issuer: str,
                        name: str | None = None) -> SigstoreSigner:
    """Copy ``trusted_root`` into ``TRUSTDIR/sigstore/`` and write the pin ``<name>.toml`` beside it.

    The root is parsed first (so the extra is needed to pin), nothing is overwritten, and an identity
    already pinned under another name is refused."""
    check_pin_values(identity, issuer, source="--identity/--issuer")
    name = name or default_signer_name(identity)
    if not _NAME.fullmatch(name):
        raise UsageError(f"signer name {name!r} must match [A-Za-z0-9][A-Za-z0-9._-]*, at most 64 chars", subject=name)
    try:
        _require_sigstore()
    except SigstoreUnavailableError as e:
        raise HostError("cannot pin a sigstore signer: install gapship[sigstore]", subject="sigstore") from e
    folder = trust_dir / SIGSTORE_DIR
    existing = load_sigstore_signers(trust_dir) if trust_dir.is_dir() else ()
    _refuse_existing(existing, folder, name=name, identity=identity, issuer=issuer)
    root_copy, pin = folder / f"{name}.trusted_root.json", folder / f"{name}{PIN_SUFFIX}"
    data = _read_root_file(trusted_root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_new(root_copy, data)
    except OSError as e:
        raise HostError(f"cannot write the sigstore pin into {folder}: {e.strerror}", subject=str(folder)) from e
    wrote_pin = False
    try:
        # Check the copy that will be used, not the original, which could change in between.
        _verifier(load_trusted_root(root_copy, source=trusted_root), source=trusted_root)
        _write_new(pin, _pin_text(identity, issuer, root_copy.name))
        wrote_pin = True
        return _load_pin(pin)
    except BaseException as e:
        root_copy.unlink()
        if wrote_pin:
            pin.unlink()
        if isinstance(e, OSError):
            raise HostError(f"cannot write the sigstore pin into {folder}: {e.strerror}", subject=str(folder)) from e
        raise


def _read_root_file(path: Path) -> bytes:
    return read_bounded(path, cap=MAX_TRUSTED_ROOT_BYTES, refuse=_refuse_trusted_root(str(path)), follow_symlinks=True)


def _refuse_existing(existing: Sequence[SigstoreSigner], folder: Path, *, name: str, identity: str, issuer: str) -> None:
    for s in existing:
        if (s.identity, s.issuer) == (identity, issuer):
            raise UsageError(f"identity {identity!r} is already pinned as {s.name!r}", subject=s.name)
    for taken in (f"{name}{PIN_SUFFIX}", f"{name}.trusted_root.json"):
        if (folder / taken).exists():
            raise UsageError(f"{SIGSTORE_DIR}/{taken} already exists; choose another --name", subject=taken)


def _pin_text(identity: str, issuer: str, root_name: str) -> bytes:
    # JSON strings without \u escapes are TOML basic strings once control characters are excluded
    # (check_pin_values); the pin is read back by _load_pin before it is reported.
    def q(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    return (f"# gapship sigstore signer pin (docs/sigstore.md)\nidentity = {q(identity)}\n"
            f"issuer = {q(issuer)}\ntrusted_root = {q(root_name)}\n").encode("utf-8")


def _write_new(path: Path, data: bytes) -> None:
    """Write ``path`` atomically; never replace an existing file (FileExistsError)."""
    with atomic_file(path, replace=False) as f:
        f.write(data)