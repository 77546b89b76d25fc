"""include/exclude (bundler/selection.py) means what huggingface_hub's allow_patterns/ignore_patterns
mean: the same answers as huggingface_hub.utils.filter_repo_objects, over nested folders and hidden files."""

from __future__ import annotations

import pytest

from gapship.bundler.selection import Selection

PATHS = [
    "config.json", ".gitattributes", "README.md", "model.safetensors", "model-00001-of-00002.safetensors",
    "onnx/model.onnx", "onnx/.hidden.json", "sub/dir/config.json", "sub/dir/.cache/x.bin", "gguf/q4_k_m.gguf",
    "gguf/q8_0.gguf", "tokenizer.json", "tokenizer_config.json", "Model.BIN", "a[b].txt",
]

CASES: list[tuple[list[str] | None, list[str]]] = [
    (None, []),
    (["*.json"], []),
    (["*.json", "*.safetensors"], ["onnx/"]),
    (None, [".*", "*/.*"]),
    (["onnx/"], []),
    (["sub/"], ["*.bin"]),
    (["*"], ["*.gguf", "pytorch_model.bin"]),
    (["gguf/*q4*"], []),
    (["*.bin"], []),  # case-sensitive: Model.BIN is not *.bin
    (["tokenizer*"], ["*config*"]),
    (["sub\\dir\\"], []),  # a backslash is a separator
    (["a[[]b].txt"], []),
    ([], []),
]


@pytest.mark.parametrize(("include", "exclude"), CASES)
def test_selection_is_huggingface_hub_filter_repo_objects(include: list[str] | None, exclude: list[str]) -> None:
    from huggingface_hub.utils import filter_repo_objects

    expected = list(filter_repo_objects(PATHS, allow_patterns=include, ignore_patterns=exclude or None))
    selection = Selection(None if include is None else tuple(include), tuple(exclude))
    assert [p for p in PATHS if selection.keeps(p)] == expected


def test_star_crosses_folders_and_matches_hidden_files() -> None:
    selection = Selection(("*.json",))
    assert selection.keeps("sub/dir/config.json") and selection.keeps("onnx/.hidden.json")
    assert not selection.keeps("model.safetensors")


def test_exclude_applies_after_include() -> None:
    selection = Selection(("*.json",), ("sub/",))
    assert selection.keeps("config.json") and not selection.keeps("sub/dir/config.json")


def test_no_patterns_keeps_everything() -> None:
    assert Selection().everything and Selection().keeps(".gitattributes")
    assert not Selection(exclude=("x",)).everything
