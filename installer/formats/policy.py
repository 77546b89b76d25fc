"""The safeguards policy a bundle carries (docs/policy.md): a pure parser and validator.

The vendor's policy says which uses are prohibited, which sites may install the bundle, which
safeguards each site must have in place, which sites are sensitive (they also need a signed site
authorization), and at which sites each model is enabled. The bundler validates it before it signs
anything; the installer enforces it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import GapshipError, UsageError
from ..kit import Fields, first_key, parse_toml

POLICY_SCHEMA_VERSION = 1
ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
CONTROL_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


@dataclass(frozen=True)
class SiteRule:
    site: str
    safeguards: tuple[str, ...]
    sensitive: bool


@dataclass(frozen=True)
class Policy:
    prohibited_uses: tuple[str, ...]
    sites: Mapping[str, SiteRule]
    models: Mapping[str, tuple[str, ...]]  # model name -> sites where it is enabled

    def check_models(self, names: set[str]) -> None:
        """The bundle's models and the policy's must be the same set: a model the policy does
        not mention would be enabled nowhere, and a policy entry for a missing model is a typo."""
        missing = sorted(names - self.models.keys())
        if missing:
            raise UsageError(f"policy enables model {missing[0]!r} at no site (add [models.{missing[0]}])", subject=missing[0])
        unknown = sorted(self.models.keys() - names)
        if unknown:
            raise UsageError(f"policy names model {unknown[0]!r}, which is not in the bundle", subject=unknown[0])


def parse_policy(data: bytes, *, source: str, error: type[GapshipError] = UsageError) -> Policy:
    """Parse and validate policy TOML; raise ``error`` with a message naming the problem."""
    raw = parse_toml(data, source=source, error=error)
    try:
        return _policy(raw)
    except _Bad as e:
        raise error(f"{source}: {e}", subject=source) from None


class _Bad(Exception):
    """A problem in the policy; parse_policy prefixes the file name and raises the caller's class."""

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)


# The kit's readers in the policy's words: "<where> must be a table", the first unknown key by repr.
_FIELDS = Fields(_Bad, an_object="a table", unknown=first_key)


def _keys(obj: Mapping[str, Any], where: str, required: set[str], optional: set[str]) -> None:
    _FIELDS.keys(obj, where, required=required, optional=optional)


def _strings(value: object, where: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    return _FIELDS.strings(value, where, described="list of non-empty strings", item=str.strip, pattern=pattern)


def _table(value: object, where: str) -> Mapping[str, Any]:
    return _FIELDS.mapping(value, where)


def _policy(raw: Mapping[str, Any]) -> Policy:
    _keys(raw, "policy", {"schema_version", "prohibited_uses", "sites", "models"}, set())
    version = raw["schema_version"]
    if type(version) is not int or version != POLICY_SCHEMA_VERSION:  # True == 1.0 == 1 in Python
        raise _Bad(f"schema_version must be {POLICY_SCHEMA_VERSION}, not {raw['schema_version']!r}")
    prohibited = _strings(raw["prohibited_uses"], "prohibited_uses")
    if not prohibited:
        raise _Bad("prohibited_uses must list at least one use")
    sites = {sid: _site(sid, body) for sid, body in _table(raw["sites"], "sites").items()}
    if not sites:
        raise _Bad("sites must declare at least one site")
    models: dict[str, tuple[str, ...]] = {}
    for name, body in _table(raw["models"], "models").items():
        where = f"models.{name}"
        if not ID_RE.fullmatch(name):
            raise _Bad(f"model name {name!r} must match {ID_RE.pattern}")
        table = _table(body, where)
        _keys(table, where, {"sites"}, set())
        enabled = _strings(table["sites"], f"{where}.sites", ID_RE)
        if not enabled:  # a model enabled at no site could never be installed anywhere: a mistake
            raise _Bad(f"{where}.sites must name at least one site")
        for sid in enabled:
            if sid not in sites:
                raise _Bad(f"{where}.sites names site {sid!r}, which is not declared under [sites]")
        models[name] = enabled
    return Policy(prohibited_uses=prohibited, sites=sites, models=models)


def _site(sid: str, body: object) -> SiteRule:
    where = f"sites.{sid}"
    if not ID_RE.fullmatch(sid):
        raise _Bad(f"site id {sid!r} must match {ID_RE.pattern}")
    table = _table(body, where)
    _keys(table, where, {"safeguards"}, {"sensitive"})
    sensitive = table.get("sensitive", False)
    if not isinstance(sensitive, bool):
        raise _Bad(f"{where}.sensitive must be true or false")
    return SiteRule(site=sid, safeguards=_strings(table["safeguards"], f"{where}.safeguards", CONTROL_RE), sensitive=sensitive)
