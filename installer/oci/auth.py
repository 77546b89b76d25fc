"""Registry credentials and the two challenges registries send (docs/oci.md, "Authentication").

Credentials come from one JSON file in docker's ``config.json`` format: ``--registry-config FILE``,
else ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (absent is fine: anonymous). Only
``auths`` entries are read (``auth``, the base64 of ``user:password``, or ``username`` and
``password``, or an ``identitytoken``). Credential helpers (``credsStore``, ``credHelpers``) are
programs, and the trusted base runs none: use a plain ``auths`` entry (``docker login`` with no
helper configured writes one).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HostError, UsageError
from ..kit import parse_json, read_optional, refuse_as

MAX_CONFIG_BYTES = 1024 * 1024
_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    identity_token: str | None = None  # a refresh token for the bearer flow (docker's identitytoken)

    def basic(self) -> str | None:
        if self.username is None or self.password is None:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")


ANONYMOUS = Credentials()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header (registries send one)."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3) or "").replace('\\"', '"')
              for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def default_config_path() -> Path:
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def load_credentials(host: str, *, config: Path | None) -> Credentials:
    """The credentials for ``host`` (``host[:port]``) from ``config`` (``--registry-config``, which must
    exist: exit 2), or from docker's default file, if any (a broken default file is exit 7)."""
    path = config or default_config_path()
    error = UsageError if config is not None else HostError
    data = read_optional(path, cap=MAX_CONFIG_BYTES, refuse=refuse_as(error, "registry config {path}: {why}"),
                         follow_symlinks=True)
    if data is None:
        if config is not None:
            raise UsageError(f"registry config {str(path)!r} does not exist", subject=str(path))
        return ANONYMOUS
    doc = parse_json(data, source=f"registry config {path}", error=error)
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return ANONYMOUS
    for key, entry in auths.items():
        if isinstance(entry, dict) and _host_of(str(key)) == host:
            return _entry(entry, where=f"registry config {path}, {key!r}", error=error)
    return ANONYMOUS


def _host_of(key: str) -> str:
    """docker keeps some keys as URLs (``https://host/v1/``); compare the host part only."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key.split("/", 1)[0]


def _entry(entry: dict[str, object], *, where: str, error: type[UsageError] | type[HostError]) -> Credentials:
    raw_token = entry.get("identitytoken")
    token = raw_token if isinstance(raw_token, str) else None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise error(f"{where}: 'auth' is not base64 of user:password", subject=where) from None
        if not sep:
            raise error(f"{where}: 'auth' is not base64 of user:password", subject=where)
        return Credentials(user, password, token)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str):
        return Credentials(name, secret, token)
    return Credentials(identity_token=token)
