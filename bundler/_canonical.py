"""The manifest's canonical bytes, written a piece at a time (docs/format.md, section 4.1).

:meth:`~..installer.manifest.Manifest.to_bytes` builds the whole manifest as a dict tree, then as one
str, then encodes that: for 200,000 files (docs/format.md, "Limits") about 30 MB of JSON, held as a
tree, a str and bytes at once at the peak of a build. Canonical JSON composes: an object is ``{``, its
``key:value`` members in key order joined by ``,``, then ``}``; a list likewise. So the same bytes can
be written a thousand files at a time into one buffer that becomes the result without a copy.

The objects are built here with the keys ``Manifest.to_dict`` uses; tests/bundler/test_canonical.py
holds the two to the same bytes, so a change to one that is not made to the other fails the tests.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from functools import partial

from ..installer.manifest import FORMAT_NAME, Component, FileEntry, Manifest, canonical_json

_BATCH = 1000  # files encoded per json.dumps call: small dicts in flight, few Python-level calls


def manifest_bytes(m: Manifest) -> bytes:
    """Exactly ``m.to_bytes()``."""
    out = io.BytesIO()
    head: dict[str, object] = {
        "format": FORMAT_NAME,
        "format_version": m.format_version,
        "bundle": {"name": m.name, "version": m.version},
        "created": m.created,
        "hash_algorithm": m.hash_algorithm,
        "chunk_size": m.chunk_size,
        "payload_size": m.payload_size,
        "chunks": [{"name": c.name, "size": c.size, "hash": c.hash} for c in m.chunks],
    }
    if m.expires is not None:
        head["expires"] = m.expires
    _object(out, head, "components", partial(_components, out, m.components))
    return out.getvalue()  # BytesIO hands over its buffer: no second copy of the JSON


def _object(out: io.BytesIO, members: dict[str, object], key: str, write_value: Callable[[], None]) -> None:
    """``members`` plus ``key``, whose value ``write_value`` writes, as one canonical JSON object."""
    out.write(b"{")
    for i, name in enumerate(sorted([*members, key])):
        out.write(b"," if i else b"")
        out.write(canonical_json(name) + b":")
        if name == key:
            write_value()
        else:
            out.write(canonical_json(members[name]))
    out.write(b"}")


def _components(out: io.BytesIO, components: Sequence[Component]) -> None:
    out.write(b"[")
    for i, comp in enumerate(components):
        out.write(b"," if i else b"")
        _object(out, {"kind": comp.kind, "name": comp.name}, "files", partial(_files, out, comp.files))
    out.write(b"]")


def _files(out: io.BytesIO, files: Sequence[FileEntry]) -> None:
    out.write(b"[")
    for start in range(0, len(files), _BATCH):
        out.write(b"," if start else b"")
        batch = [{"path": f.path, "size": f.size, "mode": f.mode, "hash": f.hash, "offset": f.offset}
                 for f in files[start:start + _BATCH]]
        out.write(canonical_json(batch)[1:-1])  # the members of the list, without its brackets
    out.write(b"]")
