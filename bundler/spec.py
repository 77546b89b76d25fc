"""Bundle specs (docs/spec.md): what to freeze. Paths are relative to the spec file."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..installer.errors import GapshipError, UsageError
from ..installer.manifest import check_name, check_version


@dataclass(frozen=True)
class ModelSource:
    name: str
    source: Path


@dataclass(frozen=True)
class BundleSpec:
    path: Path
    name: str
    version: str
    models: tuple[ModelSource, ...]
    safeguards: Path


def load_spec(path: Path) -> BundleSpec:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"spec {str(path)!r} does not exist", subject=str(path)) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"spec {path}: cannot read it: {e}", subject=str(path)) from None
    try:
        return _spec(raw, path)
    except GapshipError as e:
        raise UsageError(f"spec {path}: {e.message}", subject=str(path)) from None


def _table(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise UsageError(f"[{where}] is missing or not a table")
    return value


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}.{key} is missing or not a string")
    return value


def _only(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(raw.keys() - allowed)
    if unknown:
        raise UsageError(f"{where} has unknown key {unknown[0]!r}")


def _spec(raw: Mapping[str, Any], path: Path) -> BundleSpec:
    base = path.parent
    _only(raw, {"bundle", "model", "safeguards"}, "the spec")
    bundle = _table(raw, "bundle", "bundle")
    _only(bundle, {"name", "version"}, "[bundle]")
    name, version = _text(bundle, "name", "bundle"), _text(bundle, "version", "bundle")
    check_name(name, "bundle name")
    check_version(version)
    models_raw = raw.get("model")
    if not isinstance(models_raw, list) or not models_raw:
        raise UsageError("the spec needs at least one [[model]]")
    models = []
    for i, entry in enumerate(models_raw):
        where = f"model[{i}]"
        if not isinstance(entry, dict):
            raise UsageError(f"{where} must be a table")
        _only(entry, {"name", "source"}, where)
        model = _text(entry, "name", where)
        check_name(model, "model name")
        models.append(ModelSource(model, base / _text(entry, "source", where)))
    if len({m.name for m in models}) != len(models):
        raise UsageError("two [[model]] entries share a name")
    safeguards = _table(raw, "safeguards", "safeguards")
    _only(safeguards, {"source"}, "[safeguards]")
    return BundleSpec(path=path, name=name, version=version, models=tuple(models),
                      safeguards=base / _text(safeguards, "source", "safeguards"))
