"""The bundle's CycloneDX 1.6 JSON SBOM, ``sbom/bom.cdx.json`` (docs/sbom.md, docs/format.md 11.3).

Made with cyclonedx-python-lib, CycloneDX's own library (the ``gapship[sbom]`` extra; the installer
never imports it, it reads the file with :mod:`gapship.installer.sbom`). What it lists comes from the
manifest being built, so every hash in it is the manifest's: the bundle as the root component, each
model as a ``machine-learning-model`` with one ``file`` component per file and its model card, each
wheel as a ``library`` with its purl, hash and the license its metadata declares (none when it
declares none), the safeguards policy as ``data``, and the dependency relations of the wheels'
``Requires-Dist`` among the bundled wheels.

The output is a function of the bundle's contents and ``created`` alone (serial number derived from
them, timestamp = the bundle's creation time, sorted keys), so a rebuild makes the same bytes
(``build --check-against``, docs/sbom.md "Independent rebuilds").
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email.parser import HeaderParser
from typing import TYPE_CHECKING, Any

from packaging.markers import InvalidMarker, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from ..installer.deploy.deps import WHEELS, Target
from ..installer.errors import HostError, UsageError
from ..installer.formats.manifest import POLICY_PATH, Component
from ..installer.sbom import SBOM_PATH

if TYPE_CHECKING:
    from cyclonedx.model.component import Component as CdxComponent

EXTRA = "gapship[sbom]"
MAX_METADATA_BYTES = 4 * 1024 * 1024  # a wheel's METADATA; real ones are a few KiB (a README at most)
_NAMESPACE = uuid.UUID("6f1d9b43-5d0e-4b53-9d3e-1c1c0b5a7e19")  # gapship's, for the SBOM serial number
_ALGORITHMS = {"sha256": "SHA_256", "sha384": "SHA_384", "sha512": "SHA_512"}
_CDX_NAMES = {"sha256": "SHA-256", "sha384": "SHA-384", "sha512": "SHA-512"}  # the same, as CycloneDX writes them


@dataclass(frozen=True)
class WheelInfo:
    """What a wheel's own metadata says of it (``*.dist-info/METADATA``)."""

    name: str  # canonical
    version: str
    license: str | None  # License-Expression, else License; None when the metadata has neither
    license_is_expression: bool
    requires: tuple[Requirement, ...]


def require_cyclonedx() -> None:
    """Build always writes an SBOM (docs/sbom.md); without the library it refuses, naming the extra."""
    try:
        import cyclonedx.output.json  # noqa: F401
    except ImportError:
        raise HostError(f"gapship build writes a CycloneDX SBOM and needs cyclonedx-python-lib: install {EXTRA}",
                        subject="cyclonedx-python-lib") from None


def read_wheel_info(source: str, bundle_path: str) -> WheelInfo:
    """The name, version, license and requirements of the wheel at ``source`` (bundled as ``bundle_path``)."""
    try:
        name, version, _, _ = parse_wheel_filename(bundle_path.rsplit("/", 1)[-1])
    except InvalidWheelFilename as e:
        raise UsageError(f"{bundle_path} is not a wheel file name: {e}", subject=bundle_path) from None
    headers = HeaderParser().parsestr(_metadata_text(source, bundle_path))
    expression = (headers.get("License-Expression") or "").strip()
    declared = (headers.get("License") or "").strip()
    # Only what the metadata declares: no classifier mapping, no guess (issue 19, "Bad input").
    license_ = expression or (declared if declared and declared.upper() != "UNKNOWN" else "") or None
    requires = []
    for line in headers.get_all("Requires-Dist") or []:
        try:
            requires.append(Requirement(line))
        except InvalidRequirement:
            continue  # pip resolved the set; a requirement it could read but packaging cannot adds no edge
    return WheelInfo(name=str(name), version=str(version), license=license_, license_is_expression=bool(expression),
                     requires=tuple(requires))


def _metadata_text(source: str, bundle_path: str) -> str:
    try:
        with zipfile.ZipFile(source) as z:
            names = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise UsageError(f"{bundle_path} has {len(names)} .dist-info/METADATA files, not one",
                                 subject=bundle_path)
            info = z.getinfo(names[0])
            if info.file_size > MAX_METADATA_BYTES:
                raise UsageError(f"{bundle_path}: METADATA is over {MAX_METADATA_BYTES} bytes", subject=bundle_path)
            return z.read(info).decode("utf-8", errors="replace")
    except (OSError, zipfile.BadZipFile) as e:
        raise UsageError(f"cannot read the metadata of {bundle_path}: {e}", subject=bundle_path) from None


def render_sbom(*, name: str, version: str, created: datetime, algorithm: str, components: Sequence[Component],
                wheels: Mapping[str, WheelInfo], target: Target | None = None) -> bytes:
    """The SBOM's bytes for a bundle with these components (every file hash already known) and these
    wheels (bundle path -> metadata). Compact JSON with sorted keys and one trailing newline."""
    return b"".join(sbom_stream(name=name, version=version, created=created, algorithm=algorithm,
                                components=components, wheels=wheels, target=target).pieces())


@dataclass(frozen=True)
class SbomStream:
    """The SBOM's bytes as pieces, and how many there are in all: what :func:`render_sbom` returns,
    written a piece at a time. At the file cap (200,000 files) the one-dict rendering peaked near 380 MB
    (a dict per file, then the whole text, then its bytes); the pieces are made twice (once to count
    them, once to write them) and never held together."""

    skeleton: tuple[bytes, ...]  # the library's document around the models' file lists, in order
    lists: tuple[Component, ...]  # the model whose file list goes after skeleton[i]
    algorithm: str
    size: int = 0

    def pieces(self) -> Iterator[bytes]:
        for i, part in enumerate(self.skeleton):
            yield part
            if i < len(self.lists):
                yield from _file_list(self.lists[i], self.algorithm)


def sbom_stream(*, name: str, version: str, created: datetime, algorithm: str, components: Sequence[Component],
                wheels: Mapping[str, WheelInfo], target: Target | None = None) -> SbomStream:
    """:func:`render_sbom`'s bytes, to be written a piece at a time (:meth:`SbomStream.pieces`)."""
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component as Cdx, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    root = Cdx(type=ComponentType.APPLICATION, name=name, version=version, bom_ref=f"bundle:{name}@{version}")
    bom = Bom(serial_number=_serial(name, version, algorithm, components),
              metadata=BomMetaData(component=root, timestamp=created))
    bom.metadata.tools.components.add(Cdx(type=ComponentType.APPLICATION, name="gapship", version=_version("gapship")))
    bom.metadata.tools.components.add(Cdx(type=ComponentType.LIBRARY, name="cyclonedx-python-lib",
                                          version=_version("cyclonedx-python-lib")))
    children: list[Cdx] = []
    added: dict[str, dict[str, object]] = {}  # bom-ref -> members added to the library's JSON output
    # Each model's file list is a placeholder string in the document, replaced by the list when written.
    marker = f"gapship-file-list-{secrets.token_hex(16)}"
    models: list[Component] = []
    needed = {POLICY_PATH, *wheels}
    # The policy and the wheels are never a model's files: the models' (nearly all files) are not walked.
    hashes = {f.path: f.hash for c in components if c.kind != "model" for f in c.files if f.path in needed}
    for comp in components:
        if comp.kind == "model":
            children.append(_model(comp))
            card = _model_card(comp)
            added[f"model:{comp.name}"] = {"components": f"{marker}-{len(models)}", **({"modelCard": card} if card else {})}
            models.append(comp)
        elif comp.kind == "safeguards":
            children.append(_file_like(ComponentType.DATA, "safeguards-policy", POLICY_PATH,
                                       hashes[POLICY_PATH], algorithm, ref="safeguards:policy"))
    libraries = {path: _library(info, hashes[path], algorithm) for path, info in sorted(wheels.items())}
    for lib in libraries.values():
        bom.components.add(lib)
    for child in children:
        bom.components.add(child)
    _register_relations(bom, root, children, wheels, libraries, target)
    text = JsonV1Dot6(bom).output_as_string()
    parts = re.split(f'"{marker}-([0-9]+)"'.encode(), _canonical(json.loads(text), added))
    skeleton, order = tuple(parts[0::2]), [int(i) for i in parts[1::2]]
    if sorted(order) != list(range(len(models))):  # each placeholder once: the marker is random
        raise AssertionError(f"SBOM file-list placeholders out of place: {order}")
    stream = SbomStream(skeleton=skeleton, lists=tuple(models[i] for i in order), algorithm=algorithm)
    return replace(stream, size=sum(map(len, stream.pieces())))


def _file_list(comp: Component, algorithm: str) -> Iterator[bytes]:
    """One CycloneDX ``file`` component per model file, as the JSON :func:`_canonical` would write
    for it (sorted keys, compact, strings as json.dumps writes them), in pieces of about 64 KiB.
    Written directly rather than through the library's objects: those cost about a millisecond each
    to build and serialise, and a bundle may hold 200,000 files (docs/format.md, "Limits"), which took
    over ten minutes. The tests check the result against the schema like the rest."""
    alg = json_string(_CDX_NAMES[algorithm])
    batch: list[str] = ["["]
    held = 0
    for n, f in enumerate(comp.files):
        path = json_string(f.path)
        # "file:" needs no escaping: the path is encoded once for its two places.
        entry = (f'{"," if n else ""}{{"bom-ref":"file:{path[1:]},"hashes":[{{"alg":{alg},'
                 f'"content":{json_string(f.hash)}}}],"name":{path},"type":"file"}}')
        batch.append(entry)
        held += len(entry)
        if held >= 64 * 1024:
            yield "".join(batch).encode("utf-8")
            batch, held = [], 0
    batch.append("]")
    yield "".join(batch).encode("utf-8")


def json_string(text: str) -> str:
    """``json.dumps(text, ensure_ascii=False)``: the very function it calls for a string, without the
    encoder object json.dumps makes per call with that option (most of the file list's time)."""
    return _encode_string(text)


_encode_string: Callable[[str], str] = json.encoder.encode_basestring


def _version(distribution: str) -> str:
    """How the SBOM was made (CISA minimum elements): the tools' versions, part of the build's inputs."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _serial(name: str, version: str, algorithm: str, components: Sequence[Component]) -> uuid.UUID:
    """``uuid.uuid5(_NAMESPACE, identity)`` of the bundle's name, version, algorithm and every file's
    path and hash, one per line, computed as uuid5 does (SHA-1 of the namespace and the UTF-8 name, the
    first 16 bytes, version 5) but fed a file at a time instead of from one string of every file."""
    h = hashlib.sha1(_NAMESPACE.bytes, usedforsecurity=False)
    h.update(f"{name}\n{version}\n{algorithm}\n".encode("utf-8"))
    first = True
    for c in components:
        for f in c.files:
            h.update(f"{'' if first else chr(10)}{f.path} {f.hash}".encode("utf-8"))
            first = False
    return uuid.UUID(bytes=h.digest()[:16], version=5)


def _hashes(digest: str, algorithm: str) -> list[Any]:
    from cyclonedx.model import HashAlgorithm, HashType

    return [HashType(alg=getattr(HashAlgorithm, _ALGORITHMS[algorithm]), content=digest)]


def _file_like(kind: Any, name: str, path: str, digest: str, algorithm: str, *, ref: str) -> CdxComponent:
    from cyclonedx.model.component import Component as Cdx

    return Cdx(type=kind, name=name, bom_ref=ref, hashes=_hashes(digest, algorithm), description=path)


def _model(comp: Component) -> CdxComponent:
    from cyclonedx.model.component import Component as Cdx, ComponentType, Pedigree

    card = comp.card
    model = Cdx(type=ComponentType.MACHINE_LEARNING_MODEL, name=comp.name, bom_ref=f"model:{comp.name}",
                licenses=_licenses(card.license if card else None, expression=True),
                description=card.description if card else None)
    if card is not None and card.base_model:
        model.pedigree = Pedigree(ancestors=[Cdx(type=ComponentType.MACHINE_LEARNING_MODEL, name=card.base_model,
                                                 bom_ref=f"base-model:{comp.name}")])
    return model


def _model_card(comp: Component) -> dict[str, object]:
    """CycloneDX 1.6 ``modelCard.modelParameters`` from the card's task and architecture. The library
    does not model model cards yet (11.x), so they are added to its JSON output; the schema checks them."""
    card = comp.card
    params: dict[str, object] = {}
    if card is not None and card.task:
        params["task"] = card.task
    if card is not None and card.architecture:
        params["modelArchitecture"] = card.architecture
    return {"modelParameters": params} if params else {}


def _library(info: WheelInfo, digest: str, algorithm: str) -> CdxComponent:
    from cyclonedx.model.component import Component as Cdx, ComponentType
    from packageurl import PackageURL

    return Cdx(type=ComponentType.LIBRARY, name=info.name, version=info.version,
               bom_ref=f"pkg:pypi/{info.name}@{info.version}", hashes=_hashes(digest, algorithm),
               purl=PackageURL(type="pypi", name=info.name, version=info.version),
               licenses=_licenses(info.license, expression=info.license_is_expression))


def _licenses(text: str | None, *, expression: bool) -> list[Any]:
    """An SPDX expression as such; any other declared text as a named license; nothing as nothing."""
    from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression

    if not text:
        return []
    if expression or _looks_like_spdx(text):
        try:
            from license_expression import get_spdx_licensing  # type: ignore[import-untyped]

            get_spdx_licensing().parse(text, validate=True)
            return [LicenseExpression(text)]
        except Exception:  # noqa: BLE001 - not a valid SPDX expression: keep the words, as a name
            pass
    return [DisjunctiveLicense(name=text[:1024])]


def _looks_like_spdx(text: str) -> bool:
    return "\n" not in text and len(text) <= 200


def _register_relations(bom: Any, root: Any, children: list[Any], wheels: Mapping[str, WheelInfo],
                        libraries: Mapping[str, Any], target: Target | None) -> None:
    """The root depends on every model, the policy and the wheels no other wheel requires; a wheel on
    the bundled wheels its ``Requires-Dist`` names (markers evaluated for the target's Python)."""
    by_name = {info.name: libraries[path] for path, info in wheels.items()}
    required: set[str] = set()
    for path, info in sorted(wheels.items()):
        needs = sorted({canonicalize_name(r.name) for r in info.requires if _applies(r, target)} & by_name.keys())
        required.update(needs)
        bom.register_dependency(libraries[path], [by_name[n] for n in needs])
    top = [lib for name, lib in sorted(by_name.items()) if name not in required]
    bom.register_dependency(root, [*children, *top])


def _applies(req: Requirement, target: Target | None) -> bool:
    """Whether a requirement holds on the target (no extras asked for); unknown: it does."""
    if req.marker is None:
        return True
    env = {"extra": ""}
    if target is not None:
        env |= {"python_version": target.python, "python_full_version": f"{target.python}.0",
                "implementation_name": "pypy" if target.implementation == "pp" else "cpython",
                "platform_python_implementation": "PyPy" if target.implementation == "pp" else "CPython"}
    try:
        return bool(req.marker.evaluate(env))
    except (InvalidMarker, UndefinedEnvironmentName):
        return True


def _canonical(doc: dict[str, Any], added: Mapping[str, dict[str, object]]) -> bytes:
    for comp in doc.get("components", []):
        comp.update(added.get(comp.get("bom-ref", ""), {}))
    # Compact, sorted keys (the form of docs/format.md 4.1, without its number rules): small enough to
    # sit with the policy in a bundle's first chunk; `jq .` shows it indented.
    return (json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def wheels_of(groups: Sequence[Any]) -> dict[str, WheelInfo]:
    """The wheels among the sources (bundle path -> metadata), read from the build host's copies."""
    out: dict[str, WheelInfo] = {}
    for group in groups:
        if group.kind != "dependencies":
            continue
        for f in group:
            if f.path.startswith(WHEELS) and f.path.endswith(".whl"):
                out[f.path] = read_wheel_info(f.source, f.path)
    return out


__all__ = ["EXTRA", "SBOM_PATH", "WheelInfo", "read_wheel_info", "SbomStream", "render_sbom", "require_cyclonedx", "sbom_stream", "wheels_of"]
