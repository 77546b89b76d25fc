"""``oci://HOST[:PORT]/REPO:TAG`` and ``oci://HOST[:PORT]/REPO@sha256:HEX`` (docs/oci.md, "References")."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..errors import UsageError

SCHEME = "oci://"
# The distribution spec's grammar for repository names and tags (distribution-spec, "Pulling manifests").
_REPO = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class Reference:
    """Where an artifact lives. ``reference`` is the tag or the digest the URL named."""

    host: str  # host[:port], as in the URL
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    @property
    def hostname(self) -> str:
        host = self.host
        if host.startswith("["):
            return host[1:host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def port(self) -> int | None:
        tail = self.host.rsplit("]", 1)[-1]
        return int(tail.rsplit(":", 1)[1]) if ":" in tail else None

    def is_loopback(self) -> bool:
        """Whether the host is a loopback address (or ``localhost``): the only place --plain-http may go."""
        name = self.hostname
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.host, self.repository, tag=None, digest=digest)

    def __str__(self) -> str:
        at = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"{SCHEME}{self.host}/{self.repository}{at}"


def is_oci(text: str) -> bool:
    return text.startswith(SCHEME)


def parse_reference(text: str) -> Reference:
    """Parse ``oci://...``; a malformed one is a usage error (exit 2) that names it."""
    if not is_oci(text):
        raise UsageError(f"{text!r} is not an oci:// reference", subject=text)
    rest = text[len(SCHEME):]
    host, sep, path = rest.partition("/")
    if not sep or not _HOST.fullmatch(host) or not path:
        raise UsageError(f"{text!r}: expected oci://HOST[:PORT]/REPO:TAG or oci://HOST[:PORT]/REPO@sha256:HEX",
                         subject=text)
    tag = digest = None
    if "@" in path:
        path, digest = path.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise UsageError(f"{text!r}: the digest must be sha256:<64 lowercase hex digits>", subject=text)
    elif ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise UsageError(f"{text!r}: {tag!r} is not a valid tag", subject=text)
    if not _REPO.fullmatch(path) or len(path) > 255:
        raise UsageError(f"{text!r}: {path!r} is not a valid repository name (lowercase, digits, . _ - /)",
                         subject=text)
    return Reference(host=host, repository=path, tag=tag, digest=digest)
