"""C2SP signed notes and tlog checkpoints (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint;
docs/audit.md, "Checkpoints").

A signed note is UTF-8 text ending in a newline, a blank line, then one line per signature:
``— <key name> <base64(key id || signature)>`` (an em dash, U+2014). The signature covers the text
(with its final newline, without the blank line). The 4-byte key id is the first bytes of
SHA-256(key name || 0x0A || signature type || public key); type 0x01 is Ed25519. A verifier ignores
signature lines of keys it does not know, and refuses a note none of its keys signed.

ML-DSA-87 has no signature type allocated in the signed-note registry; gapship's lines use type
:data:`TYPE_ML_DSA_87` (0xff, the value the registry leaves for types defined elsewhere, followed in the
key-id preimage by the name ``gapship-ml-dsa-87``). A standard verifier sees an unknown key and skips
the line, as the spec requires, so a checkpoint signed with both keys still opens with the Ed25519 one.

A checkpoint is a note whose text is the log's origin, the tree size in decimal and the base64 root
hash, one per line, then optional extension lines.

Pure: no files, no clock. The signing itself is a callable the caller passes in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..crypto.keys import ED25519, ML_DSA_87, PublicKey
from ..errors import TrustError

EM_DASH = "\u2014"
TYPE_ED25519 = 0x01
TYPE_ML_DSA_87 = 0xFF
_ML_DSA_TAG = b"gapship-ml-dsa-87"
MAX_NOTE_BYTES = 1 << 20
MAX_SIGNATURES = 100  # the Go reference implementation's cap
TYPES = {ED25519: TYPE_ED25519, ML_DSA_87: TYPE_ML_DSA_87}


def key_id(name: str, key: PublicKey) -> bytes:
    """The signed-note key id of ``key`` under ``name`` (4 bytes)."""
    kind = TYPES[key.algorithm]
    tag = _ML_DSA_TAG if kind == TYPE_ML_DSA_87 else b""
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + tag + key.raw).digest()[:4]


def vkey(name: str, key: PublicKey) -> str:
    """The verifier key text ``<name>+<hex key id>+<base64(type || public key)>``."""
    return f"{name}+{key_id(name, key).hex()}+{base64.b64encode(bytes([TYPES[key.algorithm]]) + key.raw).decode()}"


def parse_vkey(text: str) -> tuple[str, PublicKey]:
    """A verifier key's name and public key; raise :class:`TrustError` if it is malformed or its id is wrong."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3 or not _good_name(parts[0]):
        raise TrustError(f"{text[:80]!r} is not a signed-note verifier key", subject="vkey")
    name, hexid, b64 = parts
    try:
        raw = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise TrustError(f"verifier key of {name!r}: bad base64", subject=name) from None
    algorithm = {v: k for k, v in TYPES.items()}.get(raw[0] if raw else -1)
    if algorithm is None:
        raise TrustError(f"verifier key of {name!r}: unknown signature type", subject=name)
    key = PublicKey(raw=raw[1:], algorithm=algorithm)
    if key_id(name, key).hex() != hexid.lower():
        raise TrustError(f"verifier key of {name!r}: key id {hexid} does not match the key", subject=name)
    return name, key


def _good_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and name.isprintable()


Sign = Callable[[bytes], bytes]


@dataclass(frozen=True)
class NoteSigner:
    """One key that signs a note: its name, its public half and a function that signs bytes."""

    name: str
    public: PublicKey
    sign: Sign


def sign_note(text: str, signers: Sequence[NoteSigner]) -> bytes:
    """The signed note of ``text`` with one signature line per signer."""
    _check_text(text)
    if not signers:
        raise ValueError("a signed note needs at least one signer")
    lines = []
    for s in signers:
        if not _good_name(s.name):
            raise ValueError(f"bad key name {s.name!r}")
        sig = base64.b64encode(key_id(s.name, s.public) + s.sign(text.encode())).decode()
        lines.append(f"{EM_DASH} {s.name} {sig}\n")
    return (text + "\n" + "".join(lines)).encode()


def _check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text or any(c < " " and c != "\n" for c in text):
        raise ValueError("note text must end in a newline and hold no blank line or control character")


def open_note(data: bytes, keys: Sequence[tuple[str, PublicKey]], *, source: str) -> tuple[str, list[str]]:
    """The text of the signed note ``data`` and the names of the given keys whose signatures verify.

    Lines of unknown keys are skipped; a line of a known key that does not verify refuses the note, and
    so does a note no given key signed (:class:`TrustError`, naming ``source``)."""
    if len(data) > MAX_NOTE_BYTES:
        raise TrustError(f"{source}: signed note over {MAX_NOTE_BYTES} bytes", subject=source)
    try:
        whole = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TrustError(f"{source}: signed note is not UTF-8", subject=source) from None
    cut = whole.rfind("\n\n")
    if cut < 0 or not whole.endswith("\n"):
        raise TrustError(f"{source}: not a signed note (no blank line before the signatures)", subject=source)
    text, sig_lines = whole[:cut + 1], whole[cut + 2:].splitlines()
    if len(sig_lines) > MAX_SIGNATURES:
        raise TrustError(f"{source}: more than {MAX_SIGNATURES} signatures", subject=source)
    known = {(name, key_id(name, key)): (name, key) for name, key in keys}
    verified: list[str] = []
    for line in sig_lines:
        name, blob = _signature_line(line, source)
        entry = known.get((name, blob[:4]))
        if entry is None:
            continue
        entry[1].verify(text.encode(), blob[4:], subject=f"{source} ({name})")
        verified.append(name)
    if not verified:
        raise TrustError(f"{source}: not signed by the given key", subject=source)
    return text, verified


def _signature_line(line: str, source: str) -> tuple[str, bytes]:
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != EM_DASH or not _good_name(parts[1]):
        raise TrustError(f"{source}: malformed signature line {line[:60]!r}", subject=source)
    try:
        blob = base64.b64decode(parts[2], validate=True)
    except binascii.Error:
        raise TrustError(f"{source}: signature of {parts[1]!r} is not base64", subject=source) from None
    if len(blob) < 5:
        raise TrustError(f"{source}: signature of {parts[1]!r} is too short", subject=source)
    return parts[1], blob


@dataclass(frozen=True)
class Checkpoint:
    """A tlog checkpoint: the log's ``origin``, its tree ``size`` and ``root`` hash, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        body = f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"
        return body + "".join(e + "\n" for e in self.extensions)

    @classmethod
    def from_text(cls, text: str, *, source: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise TrustError(f"{source}: not a checkpoint (origin, size and root hash lines)", subject=source)
        origin, size, root = lines[0], lines[1], lines[2]
        if not origin or not size.isdigit() or (size != "0" and size.startswith("0")) or not size.isascii():
            raise TrustError(f"{source}: checkpoint's origin or tree size is malformed", subject=source)
        try:
            digest = base64.b64decode(root, validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) != 32:
            raise TrustError(f"{source}: checkpoint's root hash is not 32 bytes of base64", subject=source)
        return cls(origin=origin, size=int(size), root=digest, extensions=tuple(lines[3:-1]))

    def sign(self, signers: Sequence[NoteSigner]) -> bytes:
        return sign_note(self.text(), signers)


def open_checkpoint(data: bytes, keys: Sequence[tuple[str, PublicKey]], *, source: str,
                    origin: str | None = None) -> Checkpoint:
    """A signed checkpoint, verified with ``keys`` (and its origin checked when given)."""
    text, _ = open_note(data, keys, source=source)
    cp = Checkpoint.from_text(text, source=source)
    if origin is not None and cp.origin != origin:
        raise TrustError(f"{source}: checkpoint of log {cp.origin!r}, not {origin!r}", subject=source)
    return cp


def unverified_origin(data: bytes, *, source: str) -> str:
    """The first line of a note, to know which key name to verify it with (never trusted otherwise)."""
    first = data.split(b"\n", 1)[0]
    try:
        return first.decode("utf-8")
    except UnicodeDecodeError:
        raise TrustError(f"{source}: not a checkpoint", subject=source) from None
