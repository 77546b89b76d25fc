"""The CycloneDX SBOM every build writes (docs/sbom.md): schema-valid, listing exactly the bundle's
models, wheels and policy with the manifest's hashes; model cards; licenses only as declared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from gapship.bundler.build import build
from gapship.bundler.spec import load_spec
from gapship.installer.formats.manifest import Manifest
from gapship.installer.sbom import SBOM_PATH, packages
from gapship_testing import KeyPair, noise, run, write_spec
from sbom_testing import three_wheels

CARD = '[model.card]\nlicense = "Apache-2.0"\ntask = "text-generation"\narchitecture = "LlamaForCausalLM"\n' \
       'base_model = "org/base-7b"\ndescription = "a tiny model"\n'


def _sbom(bundle: Path) -> tuple[bytes, Manifest]:
    code = run("inspect", bundle, "--sbom")
    assert code.exit_code == 0, code.stderr
    return code.stdout_bytes, Manifest.from_bytes((bundle / "manifest.json").read_bytes())


def _valid(data: bytes) -> dict[str, Any]:
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode())
    assert errors is None, errors
    return json.loads(data)  # type: ignore[no-any-return]


@pytest.fixture
def full_bundle(tmp_path: Path, make_key: Callable[[str], KeyPair]) -> Path:
    spec = write_spec(tmp_path / "src", {"w.bin": noise(3000, seed=2), "config.json": b"{}\n"})
    spec.write_text(spec.read_text().replace('source = "model"\n', 'source = "model"\n' + CARD))
    out = tmp_path / "bundle"
    build(load_spec(spec), out=out, key=make_key("release").key, chunk_size=4096, dependencies=three_wheels(tmp_path / "wheels"))
    return out


def test_sbom_is_schema_valid_and_lists_exactly_the_bundles_wheels_and_models(full_bundle: Path) -> None:
    data, m = _sbom(full_bundle)
    doc = _valid(data)
    hashes = {f.path: f.hash for f in m.files()}
    assert doc["specVersion"] == "1.6" and doc["metadata"]["component"]["name"] == "demo"
    libraries = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    assert sorted(libraries) == ["alpha", "beta", "gamma"]
    for name, version in (("alpha", "1.2.0"), ("beta", "2.0.1"), ("gamma", "0.1")):
        lib = libraries[name]
        assert lib["purl"] == f"pkg:pypi/{name}@{version}" and lib["version"] == version
        assert lib["hashes"] == [{"alg": "SHA-256", "content": hashes[f"dependencies/wheels/{name}-{version}-py3-none-any.whl"]}]
    models = [c for c in doc["components"] if c["type"] == "machine-learning-model"]
    assert [c["name"] for c in models] == ["tiny"]
    listed = {f["name"]: f["hashes"][0]["content"] for f in models[0]["components"]}
    assert listed == {p: h for p, h in hashes.items() if p.startswith("models/tiny/")}
    policy = next(c for c in doc["components"] if c["type"] == "data")
    assert policy["hashes"][0]["content"] == hashes["safeguards/policy.toml"]


def test_sbom_carries_the_model_card(full_bundle: Path) -> None:
    doc = _valid(_sbom(full_bundle)[0])
    model = next(c for c in doc["components"] if c["type"] == "machine-learning-model")
    assert model["licenses"] == [{"expression": "Apache-2.0"}]
    assert model["modelCard"] == {"modelParameters": {"task": "text-generation", "modelArchitecture": "LlamaForCausalLM"}}
    assert model["pedigree"]["ancestors"][0]["name"] == "org/base-7b"
    assert model["description"] == "a tiny model"
    card = Manifest.from_bytes((full_bundle / "manifest.json").read_bytes()).components[0].card
    assert card is not None and card.base_model == "org/base-7b"


def test_wheel_without_license_metadata_is_listed_with_no_license(full_bundle: Path) -> None:
    data, _ = _sbom(full_bundle)
    libraries = {c["name"]: c for c in _valid(data)["components"] if c["type"] == "library"}
    assert "licenses" not in libraries["beta"]  # never a guess
    assert libraries["alpha"]["licenses"] == [{"expression": "MIT OR Apache-2.0"}]
    assert libraries["gamma"]["licenses"] == [{"license": {"name": "BSD License with a twist"}}]
    assert {p["name"]: p["license"] for p in packages(data)} == {"alpha": "MIT OR Apache-2.0", "beta": None,
                                                                 "gamma": "BSD License with a twist"}


def test_sbom_dependency_relations_come_from_the_wheels_requirements(full_bundle: Path) -> None:
    doc = _valid(_sbom(full_bundle)[0])
    deps = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    # gamma only below Python 3.0 and delta only with an extra: not for a 3.11 target
    assert deps["pkg:pypi/alpha@1.2.0"] == ["pkg:pypi/beta@2.0.1"]
    root = doc["metadata"]["component"]["bom-ref"]
    assert sorted(deps[root]) == ["model:tiny", "pkg:pypi/alpha@1.2.0", "pkg:pypi/gamma@0.1", "safeguards:policy"]


def test_bundle_without_dependencies_or_card_gets_a_valid_sbom(make_key: Callable[[str], KeyPair],
                                                               make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(make_key("release"), files={"w.bin": b"w"})
    data, m = _sbom(bundle)
    doc = _valid(data)
    assert [c["type"] for c in doc["components"]] == ["data", "machine-learning-model"]
    assert m.format_version == 2 and [c.kind for c in m.components][-1] == "sbom"
    assert packages(data) == []


def test_sbom_is_the_same_bytes_for_the_same_inputs(tmp_path: Path, make_key: Callable[[str], KeyPair]) -> None:
    key = make_key("release").key
    spec = write_spec(tmp_path / "src", {"w.bin": b"w"})
    from datetime import datetime, timezone

    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for out in ("a", "b"):
        build(load_spec(spec), out=tmp_path / out, key=key, chunk_size=1024, now=at)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_rejects_unknown_model_card_key(tmp_path: Path, make_key: Callable[[str], KeyPair]) -> None:
    spec = write_spec(tmp_path / "src", {"w.bin": b"w"})
    spec.write_text(spec.read_text().replace('source = "model"\n', 'source = "model"\n[model.card]\nlicence = "MIT"\n'))
    result = run("build", spec, "--out", tmp_path / "out", "--key", make_key("release").private)
    assert result.exit_code == 2
    assert "model 'tiny': [model.card] has unknown key 'licence'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_sbom_path_is_the_documented_one(full_bundle: Path) -> None:
    m = Manifest.from_bytes((full_bundle / "manifest.json").read_bytes())
    sbom = [c for c in m.components if c.kind == "sbom"]
    assert [(c.name, [f.path for f in c.files]) for c in sbom] == [("sbom", [SBOM_PATH])]
