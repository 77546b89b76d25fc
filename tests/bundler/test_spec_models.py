"""The model keys of a spec (docs/spec.md): include/exclude, hf_repo, revision, cache_dir and
[model.card], each refused with one line naming it when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from gapship.bundler.spec import HfSource, load_spec
from gapship.installer.errors import UsageError
from gapship.installer.formats.manifest import ModelCard

HEAD = '[bundle]\nname = "demo"\nversion = "1.0.0"\n\n[safeguards]\nsource = "policy.toml"\n\n'


def _spec(tmp_path: Path, models: str) -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text(HEAD + models)
    return spec


def test_card_is_read_into_the_manifest_model(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, '[[model]]\nname = "tiny"\nsource = "m"\n\n[model.card]\n'
                                     'license = "apache-2.0"\ntask = "text-generation"\narchitecture = "LlamaForCausalLM"\n'
                                     'base_model = "org/base"\ndescription = "a small model"\n'))
    assert spec.models[0].card == ModelCard(license="apache-2.0", task="text-generation",
                                            architecture="LlamaForCausalLM", base_model="org/base",
                                            description="a small model")


def test_card_may_hold_some_fields(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, '[[model]]\nname = "tiny"\nsource = "m"\ncard = { license = "mit" }\n'))
    assert spec.models[0].card == ModelCard(license="mit")
    assert spec.models[0].card.to_dict() == {"license": "mit"}


@pytest.mark.parametrize(("card", "words"), [
    ('licence = "mit"', "[model.card] has unknown key 'licence'"),
    ('license = 3', "card.license must be a string"),
    (f'description = "{"x" * 4097}"', "card.description is over 4096 characters"),
])
def test_rejects_bad_card(tmp_path: Path, card: str, words: str) -> None:
    with pytest.raises(UsageError) as e:
        load_spec(_spec(tmp_path, f'[[model]]\nname = "tiny"\nsource = "m"\n\n[model.card]\n{card}\n'))
    assert words in e.value.message
    assert "\n" not in e.value.message


def test_hf_source_keys(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, '[[model]]\nname = "tiny"\nhf_repo = "org/tiny-llm"\nrevision = "v1"\n'
                                     'cache_dir = "hub"\ninclude = ["*.json", "*.safetensors"]\nexclude = ["onnx/"]\n'))
    m = spec.models[0]
    assert m.source is None and m.hf == HfSource("org/tiny-llm", "v1", tmp_path / "hub")
    assert m.include == ("*.json", "*.safetensors") and m.exclude == ("onnx/",)
    assert m.hf_repo == "org/tiny-llm"


def test_hf_repo_names_a_directory_source(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, '[[model]]\nname = "tiny"\nsource = "m"\nhf_repo = "org/tiny"\n'))
    assert spec.models[0].hf is None and spec.models[0].hf_repo == "org/tiny"
    assert spec.models[0].include is None


@pytest.mark.parametrize(("model", "words"), [
    ('name = "tiny"', "needs source (a directory or file) or hf_repo"),
    ('name = "tiny"\nhf_repo = "tiny"', "hf_repo 'tiny' is not an org/name repo id"),
    ('name = "tiny"\nhf_repo = "org/../x"', "is not an org/name repo id"),
    ('name = "tiny"\nsource = "m"\nrevision = "main"', "revision belongs to a Hugging Face source"),
    ('name = "tiny"\nsource = "m"\ncache_dir = "hub"', "cache_dir belongs to a Hugging Face source"),
    ('name = "tiny"\nsource = "m"\ninclude = "*.json"', "include must be a list of glob strings"),
    ('name = "tiny"\nsource = "m"\nexclude = ["*.bin", "*.bin"]', "lists a pattern twice"),
    ('name = "tiny"\nsource = "m"\nexlude = ["*.bin"]', "has unknown key 'exlude'"),
])
def test_rejects_bad_model_keys(tmp_path: Path, model: str, words: str) -> None:
    with pytest.raises(UsageError) as e:
        load_spec(_spec(tmp_path, f"[[model]]\n{model}\n"))
    assert words in e.value.message


def test_rejects_two_models_with_the_same_repo_id(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="two \\[\\[model\\]\\] entries publish the same hf_repo 'org/a'"):
        load_spec(_spec(tmp_path, '[[model]]\nname = "a"\nhf_repo = "org/a"\n\n'
                                  '[[model]]\nname = "b"\nsource = "m"\nhf_repo = "Org/A"\n'))
