"""The parity code (installer/bundle/fec.py) and layout (installer/formats/parity.py), and random loss
patterns repaired exactly when the math says they can be (docs/format.md, section 12).

zfec is held to the pure-Python reference written from the format section, so the section describes
the bytes zfec writes: an independent implementation that follows it can repair a bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gapship.bundler.build import build
from gapship.bundler.keys import SigningKey, keygen
from gapship.bundler.parity import parse_percent, plan
from gapship.bundler.spec import load_spec
from gapship.installer.bundle.fec import ReferenceCodec, ZfecCodec, encoding_matrix
from gapship.installer.bundle.files import read_raw_bundle
from gapship.installer.bundle.parity import load_parity
from gapship.installer.bundle.repair import repair
from gapship.installer.errors import UnsafeContentError, UsageError
from gapship.installer.formats.parity import ParityLayout
from gapship.installer.kit import canonical_json
from gapship.installer.trust import TrustStore, verify_manifest
from gapship_testing import noise, write_spec


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 40), m=st.integers(1, 12), size=st.integers(1, 300), seed=st.integers(0, 2**32 - 1),
       data=st.data())
def test_zfec_writes_and_reads_the_bytes_of_the_specified_code(k: int, m: int, size: int, seed: int,
                                                              data: st.DataObject) -> None:
    rng = __import__("random").Random(seed)
    blocks = [rng.randbytes(size) for _ in range(k)]
    parity = ZfecCodec(k, m).encode(blocks)
    assert parity == ReferenceCodec(k, m).encode(blocks)
    numbers = sorted(data.draw(st.lists(st.integers(0, k + m - 1), min_size=k, max_size=k, unique=True)))
    every = blocks + parity
    assert ReferenceCodec(k, m).decode([every[n] for n in numbers], numbers) == blocks
    assert ZfecCodec(k, m).decode([every[n] for n in numbers], numbers) == blocks


def test_encoding_matrix_is_systematic_up_to_256_blocks() -> None:
    matrix = encoding_matrix(60, 256)
    assert [list(row) for row in matrix[:60]] == [[int(r == c) for c in range(60)] for r in range(60)]
    blocks = [os.urandom(64) for _ in range(60)]
    assert ZfecCodec(60, 196).encode(blocks) == ReferenceCodec(60, 196).encode(blocks)


@pytest.mark.parametrize("text, share", [("10%", Fraction(1, 10)), ("12.5%", Fraction(1, 8)), ("100", Fraction(1))])
def test_parity_percentages(text: str, share: Fraction) -> None:
    assert parse_percent(text) == share


@pytest.mark.parametrize("text", ["0%", "101%", "-5%", "ten", ""])
def test_rejects_parity_percentage_out_of_range(text: str) -> None:
    with pytest.raises(UsageError, match="percentage"):
        parse_percent(text)


@pytest.mark.parametrize("chunks, share, expected", [
    (1, Fraction(1, 10), (1, 1)),  # too small for the percentage: still one parity chunk per group
    (41, Fraction(1, 10), (3, 2)),
    (3000, Fraction(1, 10), (150, 2)),
    (100_000, Fraction(1, 100), (500, 2)),  # k = 200: k + m <= 256
    (100, Fraction(1, 1000), (1, 1)),  # k + m <= 256
])
def test_plan_groups(chunks: int, share: Fraction, expected: tuple[int, int]) -> None:
    groups, m = plan(chunks, share)
    assert (groups, m) == expected
    assert -(-chunks // groups) + m <= 256


# -- the layout model -------------------------------------------------------------------------------

def _layout() -> dict[str, Any]:
    return {"format": "gapship-parity", "format_version": 1, "bundle": {"name": "demo", "version": "1.0.0"},
            "manifest_digest": "sha256:" + "ab" * 32, "hash_algorithm": "sha256", "chunk_size": 1024,
            "chunks": 5, "code": "reed-solomon-gf256-zfec", "groups": [{"k": 3, "m": 1}, {"k": 2, "m": 1}],
            "parity": [{"name": f"{j:05d}.bin", "group": j, "index": 0, "size": 1024, "hash": "cd" * 32}
                       for j in range(2)]}


def test_layout_round_trips() -> None:
    raw = canonical_json(_layout())
    layout = ParityLayout.from_bytes(raw)
    assert layout.to_bytes() == raw
    assert list(layout.members(0)) == [0, 2, 4] and list(layout.members(1)) == [1, 3]


@pytest.mark.parametrize("change, words", [
    (lambda d: d["groups"].__setitem__(0, {"k": 2, "m": 1}), "groups[0].k is 2"),
    (lambda d: d["groups"].__setitem__(1, {"k": 2, "m": 0}), "need m >= 1"),
    (lambda d: d.__setitem__("groups", [{"k": 5, "m": 252}]), "k + m <= 256"),
    (lambda d: d["parity"].reverse(), "expected 00000.bin"),
    (lambda d: d["parity"].pop(), "add up to 2"),
    (lambda d: d["parity"][1].__setitem__("size", 1000), "every parity chunk is chunk_size"),
    (lambda d: d["parity"][1].__setitem__("hash", "CD" * 32), "hex digest"),
    (lambda d: d.__setitem__("manifest_digest", "sha384:" + "ab" * 48), "manifest_digest"),
    (lambda d: d.__setitem__("chunks", 0), "chunks 0"),
    (lambda d: d.__setitem__("code", "raptorq"), "uses code"),
    (lambda d: d.__setitem__("format_version", 2), "upgrade gapship"),
    (lambda d: d.__setitem__("extra", 1), "unknown"),
])
def test_rejects_a_layout_that_does_not_add_up(change: Any, words: str) -> None:
    doc = _layout()
    change(doc)
    with pytest.raises(UnsafeContentError, match=words.replace("[", r"\[").replace("+", r"\+")):
        ParityLayout.from_bytes(canonical_json(doc))


def test_rejects_a_layout_that_is_not_canonical() -> None:
    with pytest.raises(UnsafeContentError, match="not canonical"):
        ParityLayout.from_bytes(json.dumps(_layout(), indent=1).encode())


# -- random loss patterns -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("loss")
    private, public, _ = keygen("release", base / "keys")
    trust = base / "trust"
    trust.mkdir()
    shutil.copy(public, trust)
    spec = write_spec(base / "src", {"w.bin": noise(18 * 1024, seed=2)})
    bundle = base / "bundle"
    build(load_spec(spec), out=bundle, key=SigningKey.load(private), chunk_size=1000, parity=Fraction(1, 2))
    return bundle, trust


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_loss_is_repaired_exactly_when_each_group_kept_k(small: tuple[Path, Path], tmp_path: Path,
                                                                 data: st.DataObject) -> None:
    source, trust = small
    work = Path(tempfile.mkdtemp(dir=tmp_path)) / "bundle"
    bundle = Path(shutil.copytree(source, work))
    names = sorted(f"chunks/{n}" for n in os.listdir(bundle / "chunks")) + \
        sorted(f"parity/{n}" for n in os.listdir(bundle / "parity") if n.endswith(".bin"))
    good = {n: (bundle / n).read_bytes() for n in names}
    lost = data.draw(st.sets(st.sampled_from(names), max_size=len(names) // 2))
    for n in lost:
        (bundle / n).unlink()
    verified = verify_manifest(read_raw_bundle(bundle), trust=TrustStore.from_dir(trust))
    parity = load_parity(bundle, verified)
    assert parity is not None
    layout = parity.layout
    per_group = [0] * len(layout.groups)
    for n in lost:
        index = int(n[-9:-4])
        per_group[layout.group_of(index) if n.startswith("chunks/") else layout.parity[index].group] += 1
    expect_whole = all(lost_here <= g.m for lost_here, g in zip(per_group, layout.groups))
    result = repair(bundle, verified, parity)
    assert result.whole == expect_whole
    for n in names:
        if (bundle / n).exists():
            assert (bundle / n).read_bytes() == good[n]
        else:
            assert not expect_whole
    shutil.rmtree(work)
