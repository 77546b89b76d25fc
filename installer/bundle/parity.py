"""Reading a bundle's ``parity/`` folder, and what its parity can rebuild (docs/format.md, section 12).

:func:`load_parity` reads ``parity/layout.json`` and ``parity/signatures/`` through the bounded
readers of :mod:`.files` (count caps, and the 16 MiB budget that a bundle's unverified side files
share) and hands them to the one trust decision (:func:`~gapship.installer.trust.verify_parity`).
:func:`damage` turns the problems a pass over the chunks found into what each damaged group lost and
whether its parity can rebuild that. Nothing here needs zfec: parity chunks are checked by hash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IntegrityError, TrustError
from ..formats.parity import LAYOUT, MAX_LAYOUT_BYTES, MAX_PARITY_CHUNKS, PARITY, ParityLayout
from ..trust import VerifiedManifest, VerifiedParity, verify_parity
from .files import MAX_UNVERIFIED_BYTES, SIGNATURES, Budget, list_entries, read_signatures, unverified_bytes

if TYPE_CHECKING:
    from .verify import ChunkProblem

DATA, PARITY_KIND = "data", "parity"  # ChunkProblem.kind
# parity/ holds layout.json, signatures/ and its chunks; a few names too many are reported as extra.
MAX_PARITY_ENTRIES = MAX_PARITY_CHUNKS + 1000


def has_parity(root: Path) -> bool:
    return (root / PARITY).is_dir() and not (root / PARITY).is_symlink()


def load_parity(root: Path, verified: VerifiedManifest) -> VerifiedParity | None:
    """The verified layout of ``root/parity/``, or None when the bundle has no ``parity/``. A
    ``parity/`` without a layout or its signatures, or with a layout that does not verify, is refused:
    a bundle that carries parity carries it signed."""
    folder = root / PARITY
    try:
        names = list_entries(folder, MAX_PARITY_ENTRIES, error=IntegrityError, shown=PARITY)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise IntegrityError(f"{PARITY} is not a directory", subject=PARITY) from None
    if LAYOUT not in names:
        raise TrustError(f"{PARITY}/ has no {LAYOUT}: its chunks cannot be checked", subject=f"{PARITY}/{LAYOUT}")
    budget = Budget(left=max(0, MAX_UNVERIFIED_BYTES - unverified_bytes(root)))
    layout = budget.read(folder / LAYOUT, MAX_LAYOUT_BYTES)
    return verify_parity(layout, read_signatures(folder / SIGNATURES, budget, within=PARITY), verified)


def parity_path(root: Path, name: str) -> Path:
    return root / PARITY / name


def list_parity_files(root: Path) -> list[str]:
    """The names in ``parity/`` other than the layout and its signatures (sorted)."""
    names = list_entries(root / PARITY, MAX_PARITY_ENTRIES, error=IntegrityError, shown=PARITY)
    return [n for n in names if n not in (LAYOUT, SIGNATURES)]


@dataclass(frozen=True)
class GroupDamage:
    """What one group lost: data chunks (manifest indexes) and parity chunks (layout indexes)."""

    group: int
    k: int
    m: int
    data: tuple[int, ...]
    parity: tuple[int, ...]

    @property
    def lost(self) -> int:
        return len(self.data) + len(self.parity)

    @property
    def repairable(self) -> bool:
        return self.lost <= self.m

    @property
    def needed(self) -> int:
        """How many more of this group's chunks would have to arrive before it can be rebuilt."""
        return max(0, self.lost - self.m)

    def to_dict(self, layout: ParityLayout) -> dict[str, object]:
        return {"group": self.group, "k": self.k, "m": self.m, "lost": self.lost,
                "data": [f"chunks/{i:05d}.bin" for i in self.data],
                "parity": [f"{PARITY}/{layout.parity[j].name}" for j in self.parity],
                "repairable": self.repairable, "needed": self.needed}


@dataclass(frozen=True)
class Damage:
    """:func:`damage`'s answer: the damaged groups, in order, and the extra files (which parity
    cannot explain and repair never removes)."""

    layout: ParityLayout
    groups: tuple[GroupDamage, ...]
    extra: tuple[str, ...] = ()

    @property
    def repairable(self) -> bool:
        return all(g.repairable for g in self.groups)

    def to_dict(self) -> dict[str, object]:
        """``verify --json``'s ``parity`` object (docs/cli.md)."""
        return {"groups": len(self.layout.groups), "parity_chunks": len(self.layout.parity),
                "repairable": self.repairable,
                "damaged_groups": [g.to_dict(self.layout) for g in self.groups],
                "needed": sum(g.needed for g in self.groups)}


def damage(problems: Iterable[ChunkProblem], layout: ParityLayout) -> Damage:
    lost: dict[int, tuple[list[int], list[int]]] = {}
    extra: list[str] = []
    for p in problems:
        if p.index is None:
            extra.append(p.chunk)
            continue
        if p.kind == DATA:
            lost.setdefault(layout.group_of(p.index), ([], []))[0].append(p.index)
        else:
            lost.setdefault(layout.parity[p.index].group, ([], []))[1].append(p.index)
    groups = tuple(GroupDamage(group=g, k=layout.groups[g].k, m=layout.groups[g].m, data=tuple(sorted(d)),
                               parity=tuple(sorted(q))) for g, (d, q) in sorted(lost.items()))
    return Damage(layout=layout, groups=groups, extra=tuple(extra))


def unrepairable_lines(d: Damage) -> Sequence[str]:
    return [f"group {g.group} lost {g.lost} of its {g.k + g.m} chunks and has {g.m} parity: "
            f"{g.needed} more of its chunks must arrive" for g in d.groups if not g.repairable]
