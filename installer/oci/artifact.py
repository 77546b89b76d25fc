"""The artifact layout: a bundle as an OCI 1.1 image manifest (docs/oci.md, "The artifact"). Pure:
bytes in, bytes out, no I/O.

- ``artifactType`` :data:`ARTIFACT_TYPE`; ``config`` the empty descriptor (``{}``), as OCI 1.1
  recommends for artifacts, so registries without artifact support (distribution 2.8) store it too;
- one layer per file of the bundle directory, each with its path in the bundle as
  ``org.opencontainers.image.title`` (so ``oras pull`` rebuilds the directory): ``manifest.json``,
  ``signatures/*``, ``roots/*``, ``authorizations/*/*``, ``parity/**`` and ``provenance/**`` as small layers with their
  own media types; every chunk as a :data:`CHUNK_TYPE` layer, its index in the signed chunk list in
  :data:`INDEX_KEY`.

Nothing in the OCI manifest is trusted: it only says where the bundle's files are. Which chunks a
bundle has, in which order, of which size and hash, comes from the signed ``manifest.json``; a layer
that disagrees with it is refused (docs/oci.md, "What is checked").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import IntegrityError
from ..kit import canonical_json, parse_json

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.gapship.bundle.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"  # sha256 of b"{}"
EMPTY_DATA = b"{}"
CHUNK_TYPE = "application/vnd.gapship.chunk.v1"
MANIFEST_LAYER_TYPE = "application/vnd.gapship.manifest.v1+json"
SIGNATURE_TYPE = "application/vnd.gapship.signature.v1"
ROOT_TYPE = "application/vnd.gapship.root.v1+json"
AUTHORIZATION_TYPE = "application/vnd.gapship.authorization.v1"
PARITY_TYPE = "application/vnd.gapship.parity.v1"
PROVENANCE_TYPE = "application/vnd.gapship.provenance.v1"
TITLE_KEY = "org.opencontainers.image.title"
INDEX_KEY = "io.gapship.chunk.index"
NAME_KEY, VERSION_KEY = "io.gapship.bundle.name", "io.gapship.bundle.version"

# Which top folder holds which media type; a path elsewhere is refused.
SIDE_TYPES = {"manifest.json": MANIFEST_LAYER_TYPE, "signatures": SIGNATURE_TYPE, "roots": ROOT_TYPE,
              "authorizations": AUTHORIZATION_TYPE, "parity": PARITY_TYPE, "provenance": PROVENANCE_TYPE,
              "chunks": CHUNK_TYPE}
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# authorizations/ID/signatures/FILE, parity/signatures/FILE and provenance/signatures/FILE are the deepest paths
_DEPTH = {"authorizations": 4, "parity": 3, "provenance": 3}
MAX_LAYERS = 100_000 + 5_000  # the manifest's chunk cap plus parity and side files


@dataclass(frozen=True, slots=True)
class Layer:
    media_type: str
    digest: str
    size: int
    path: str  # in the bundle directory: "chunks/00003.bin"
    index: int | None = None  # a chunk's place in the signed chunk list

    def to_dict(self) -> dict[str, object]:
        annotations = {TITLE_KEY: self.path}
        if self.index is not None:
            annotations[INDEX_KEY] = str(self.index)
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, "annotations": annotations}


@dataclass(frozen=True)
class Artifact:
    """A parsed gapship artifact: its layers by path, and its chunk layers by index."""

    digest: str
    layers: tuple[Layer, ...]

    def by_path(self) -> dict[str, Layer]:
        return {layer.path: layer for layer in self.layers}

    def chunks(self) -> dict[int, Layer]:
        return {layer.index: layer for layer in self.layers if layer.index is not None}


def media_type_for(path: str) -> str:
    return SIDE_TYPES[path.split("/", 1)[0]]


def build_manifest(layers: list[Layer], *, name: str, version: str) -> bytes:
    """The OCI image manifest of a bundle's layers (canonical JSON: the same bundle gives the same digest)."""
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_TYPE, "digest": EMPTY_DIGEST, "size": len(EMPTY_DATA), "data": "e30="},
        "layers": [layer.to_dict() for layer in layers],
        "annotations": {NAME_KEY: name, VERSION_KEY: version},
    })


def parse_artifact(data: bytes, *, digest: str, where: str) -> Artifact:
    """The layers of a gapship artifact, or :class:`IntegrityError` (exit 3) naming what is wrong:
    not an OCI image manifest, not a gapship artifact, a layer without a safe path, two layers for one
    path or one chunk index."""
    doc = parse_json(data, source=where, error=IntegrityError)
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise IntegrityError(f"{where} is not an OCI image manifest", subject=where)
    kind = doc.get("artifactType")
    if kind != ARTIFACT_TYPE:
        raise IntegrityError(f"{where} is not a gapship bundle (artifactType {kind!r}, expected {ARTIFACT_TYPE!r})",
                             subject=where)
    raw = doc.get("layers")
    if not isinstance(raw, list) or len(raw) > MAX_LAYERS:
        raise IntegrityError(f"{where}: 'layers' must be a list of at most {MAX_LAYERS} layers", subject=where)
    layers = [_layer(item, where=where, n=i) for i, item in enumerate(raw)]
    paths = [layer.path for layer in layers]
    if len(set(paths)) != len(paths):
        raise IntegrityError(f"{where}: two layers for one path", subject=where)
    indexes = [layer.index for layer in layers if layer.index is not None]
    if len(set(indexes)) != len(indexes):
        raise IntegrityError(f"{where}: two layers for one chunk index", subject=where)
    return Artifact(digest=digest, layers=tuple(layers))


def _layer(item: object, *, where: str, n: int) -> Layer:
    here = f"{where}, layer {n}"
    if not isinstance(item, dict):
        raise IntegrityError(f"{here} is not an object", subject=where)
    media_type, digest, size = item.get("mediaType"), item.get("digest"), item.get("size")
    found = item.get("annotations")
    annotations: dict[str, object] = found if isinstance(found, dict) else {}
    path = annotations.get(TITLE_KEY)
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise IntegrityError(f"{here}: digest {digest!r} is not sha256:<hex>", subject=where)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise IntegrityError(f"{here}: bad size {size!r}", subject=where)
    if not isinstance(path, str) or not safe_path(path):
        raise IntegrityError(f"{here}: path {path!r} is not a bundle file path", subject=where)
    if media_type != media_type_for(path):
        raise IntegrityError(f"{here}: {path} has media type {media_type!r}, expected {media_type_for(path)!r}",
                             subject=path)
    index = None
    if media_type == CHUNK_TYPE:
        text = annotations.get(INDEX_KEY)
        if not isinstance(text, str) or not text.isdigit() or len(text) > 7:
            raise IntegrityError(f"{here}: chunk {path} has no index annotation {INDEX_KEY}", subject=path)
        index = int(text)
    return Layer(media_type=media_type, digest=digest, size=size, path=path, index=index)


def safe_path(path: str) -> bool:
    """Whether ``path`` is a file of a bundle directory that an artifact may hold: a known top folder,
    plain components (no ``..``, no ``/`` at either end, nothing hidden), at most as deep as the bundle layout goes."""
    parts = path.split("/")
    if parts[0] not in SIDE_TYPES:
        return False
    if parts[0] == "manifest.json":
        return len(parts) == 1
    if len(parts) < 2 or not all(_COMPONENT.fullmatch(p) for p in parts[1:]):
        return False
    return len(parts) <= _DEPTH.get(parts[0], 2)
