"""Bundle specs (docs/spec.md): what to freeze. Paths are relative to the spec file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..installer.errors import GapshipError, UsageError
from ..installer.formats.manifest import CARD_FIELDS, MAX_CARD_TEXT, MAX_COMPONENTS, ModelCard, check_name, check_version
from ..installer.kit import Fields, Refusal, first_key, parse_toml, read_bounded

MAX_SPEC_BYTES = 1024 * 1024  # a spec is a few lines; anything near this is not one
MAX_MODELS = MAX_COMPONENTS - 2  # docs/format.md, "Limits": the policy and the dependencies are components too


@dataclass(frozen=True)
class ModelSource:
    name: str
    source: Path
    card: ModelCard | None = None  # [model.card], format v2 (docs/format.md 11.2), listed in the SBOM


@dataclass(frozen=True)
class DependencySpec:
    """The ``[dependencies]`` table (docs/dependencies.md): the Python packages the site's venv needs,
    frozen as wheels for the *target* interpreter and platform, not the build host's."""

    requirements: Path  # a requirements.txt or a PEP 751 pylock.toml
    python: str  # target "X.Y"
    platforms: tuple[str, ...]  # target platform tags, most preferred first
    implementation: str = "cp"
    find_links: tuple[Path, ...] = ()
    index_url: str | None = None  # None: pip's default index (never the build host's pip config)
    # Building an sdist runs its code on the build host, and the wheel it makes fits the build host's
    # platform, which is why this is an explicit, loudly named opt-in.
    build_sdists_on_build_host: bool = False


@dataclass(frozen=True)
class BundleSpec:
    path: Path
    name: str
    version: str
    models: tuple[ModelSource, ...]
    safeguards: Path
    dependencies: DependencySpec | None = None


def load_spec(path: Path) -> BundleSpec:
    data = read_bounded(path, cap=MAX_SPEC_BYTES, refuse=_refuse_spec, follow_symlinks=True)
    raw = parse_toml(data, source=str(path), error=UsageError, invalid="spec {source}: cannot read it: {detail}")
    try:
        return _spec(raw, path)
    except GapshipError as e:
        raise UsageError(f"spec {path}: {e.message}", subject=str(path)) from None


def _refuse_spec(r: Refusal) -> Exception:
    """The words ``read_text`` gave: its OSError as text (a directory's too), or the kit's reason."""
    if r.reason == "missing":
        return UsageError(f"spec {str(r.path)!r} does not exist", subject=str(r.path))
    return UsageError(f"spec {r.path}: cannot read it: {r.oserror or r.strerror}", subject=str(r.path))


# The kit's readers in a spec's words. Load_spec prefixes "spec PATH: " to each message, so their
# subjects are not shown; a required table or string "is missing or not" one, lists "must be" one.
_REQUIRED = Fields(UsageError, must="is missing or not", an_object="a table")
_FIELDS = Fields(UsageError, unknown=first_key)


def _table(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    return _REQUIRED.mapping(raw.get(key), f"[{where}]")


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    return _REQUIRED.string(raw.get(key), where, f".{key}", nonempty=True)


def _only(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    _FIELDS.keys(raw, where, optional=allowed)


def _spec(raw: Mapping[str, Any], path: Path) -> BundleSpec:
    base = path.parent
    _only(raw, {"bundle", "model", "safeguards", "dependencies"}, "the spec")
    bundle = _table(raw, "bundle", "bundle")
    _only(bundle, {"name", "version"}, "[bundle]")
    name, version = _text(bundle, "name", "bundle"), _text(bundle, "version", "bundle")
    check_name(name, "bundle name")
    check_version(version)
    models_raw = raw.get("model")
    if not isinstance(models_raw, list) or not models_raw:
        raise UsageError("the spec needs at least one [[model]]")
    if len(models_raw) > MAX_MODELS:  # each is a component; the policy and dependencies are two more
        raise UsageError(f"the spec lists {len(models_raw)} [[model]] entries, over the cap of {MAX_MODELS}")
    models = []
    for i, entry in enumerate(models_raw):
        where = f"model[{i}]"
        if not isinstance(entry, dict):
            raise UsageError(f"{where} must be a table")
        _only(entry, {"name", "source", "card"}, where)
        model = _text(entry, "name", where)
        check_name(model, "model name")
        card = _model_card(entry["card"], where) if "card" in entry else None
        models.append(ModelSource(model, base / _text(entry, "source", where), card))
    if len({m.name for m in models}) != len(models):
        raise UsageError("two [[model]] entries share a name")
    safeguards = _table(raw, "safeguards", "safeguards")
    _only(safeguards, {"source"}, "[safeguards]")
    dependencies = _dependencies(raw["dependencies"], base) if "dependencies" in raw else None
    return BundleSpec(path=path, name=name, version=version, models=tuple(models),
                      safeguards=base / _text(safeguards, "source", "safeguards"), dependencies=dependencies)


def _model_card(raw: object, where: str) -> ModelCard:
    """``[model.card]``: the model card fields of docs/format.md 11.2, each a string. An unknown key is
    refused (exit 2), never dropped. (Issue 18 owns the full spec reading of model cards; this is the
    minimal parse the SBOM needs, kept in one function so that a merge keeps one of the two.)"""
    if not isinstance(raw, dict):
        raise UsageError(f"{where}.card must be a table")
    _only(raw, set(CARD_FIELDS), f"{where}.card")
    fields: dict[str, str] = {}
    for key in CARD_FIELDS:
        if key in raw:
            text = _text(raw, key, f"{where}.card")
            if len(text) > MAX_CARD_TEXT:
                raise UsageError(f"{where}.card.{key} is over {MAX_CARD_TEXT} characters")
            fields[key] = text
    return ModelCard(**fields)


_PYTHON_RE = re.compile(r"3\.[0-9]{1,2}")
_PLATFORM_RE = re.compile(r"[a-z0-9_]{1,64}")
IMPLEMENTATIONS = ("cp", "pp")
_DEPENDENCY_KEYS = {"requirements", "python", "platforms", "implementation", "find_links", "index_url",
                    "build_sdists_on_build_host"}


def _dependencies(raw: object, base: Path) -> DependencySpec:
    if not isinstance(raw, dict):
        raise UsageError("[dependencies] must be a table")
    _only(raw, _DEPENDENCY_KEYS, "[dependencies]")
    python = _text(raw, "python", "dependencies")
    if not _PYTHON_RE.fullmatch(python):
        raise UsageError(f"dependencies.python {python!r} must be a Python version like \"3.11\"")
    platforms = _strings(raw, "platforms", required=True)
    for tag in platforms:
        if not _PLATFORM_RE.fullmatch(tag) or tag == "any":
            raise UsageError(f"dependencies.platforms entry {tag!r} is not a platform tag "
                             f"such as manylinux_2_28_x86_64")
    implementation = raw.get("implementation", "cp")
    if implementation not in IMPLEMENTATIONS:
        raise UsageError(f"dependencies.implementation {implementation!r} must be one of "
                         f"{', '.join(IMPLEMENTATIONS)}")
    index_url = raw.get("index_url")
    schemes = ("https://", "http://", "file://")
    if index_url is not None and (not isinstance(index_url, str) or not index_url.startswith(schemes)):
        raise UsageError("dependencies.index_url must be an http(s):// or file:// URL")
    opt_in = raw.get("build_sdists_on_build_host", False)
    if not isinstance(opt_in, bool):
        raise UsageError("dependencies.build_sdists_on_build_host must be true or false")
    return DependencySpec(
        requirements=base / _text(raw, "requirements", "dependencies"), python=python, platforms=platforms,
        implementation=implementation,
        find_links=tuple(base / p for p in _strings(raw, "find_links", required=False)),
        index_url=index_url, build_sdists_on_build_host=opt_in,
    )


def _strings(raw: Mapping[str, Any], key: str, *, required: bool) -> tuple[str, ...]:
    described = "non-empty list of strings" if required else "list of strings"
    return _FIELDS.strings(raw.get(key, None if required else []), f"dependencies.{key}", described=described,
                           nonempty=required, twice="an entry")
