"""Which files of a model source a bundle carries: ``include`` and ``exclude`` in ``[[model]]``
(docs/spec.md), with huggingface_hub's ``allow_patterns`` / ``ignore_patterns`` meaning.

A path is relative to the model's root, with ``/`` between its parts (``onnx/model.onnx``). It is
kept when ``include`` is not given or one of its patterns matches, and then dropped when one of
``exclude`` matches. Patterns are :func:`fnmatch.fnmatchcase` globs over the whole path, so ``*``
crosses ``/`` and matches a leading dot (``*.json`` keeps ``sub/.hidden.json``); a pattern ending in
``/`` means everything under that folder (``onnx/`` is ``onnx/*``). That is exactly what
``huggingface_hub.utils.filter_repo_objects`` does (tests/bundler/test_selection.py holds the two
together); it is written out here because a directory source must not need the ``gapship[hf]``
extra, and because the build needs the left-out count, which the library does not give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Selection:
    include: tuple[str, ...] | None = None  # None: every file
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", None if self.include is None else _folders(self.include))
        object.__setattr__(self, "exclude", _folders(self.exclude))

    @property
    def everything(self) -> bool:
        return self.include is None and not self.exclude

    def keeps(self, path: str) -> bool:
        """Whether the file at ``path`` (relative to the model root) is bundled."""
        if self.include is not None and not any(fnmatchcase(path, p) for p in self.include):
            return False
        return not any(fnmatchcase(path, p) for p in self.exclude)

    def describe(self) -> str:
        parts = []
        if self.include is not None:
            parts.append(f"include {list(self.include)}")
        if self.exclude:
            parts.append(f"exclude {list(self.exclude)}")
        return " and ".join(parts) or "no patterns"


def _folders(patterns: Sequence[str]) -> tuple[str, ...]:
    # huggingface_hub's rules (utils/_paths.py): a backslash is a separator, and "foo/" selects everything
    # under foo/. Bundle paths never hold a backslash (docs/format.md, 4.6), so only patterns change.
    out = (p.replace("\\", "/") for p in patterns)
    return tuple(p + "*" if p.endswith("/") else p for p in out)
