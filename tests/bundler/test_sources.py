"""bundler/sources.py: what a build bundles, found by walking each model tree once per build, and
the same files, paths, sizes and modes whichever way the spec spells a model's folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gapship.bundler.sources import SourceFile, add_dependencies, collect_sources
from gapship.bundler.deps.freeze import FrozenDependencies, Target
from gapship.bundler.spec import load_spec
from gapship.installer.formats.manifest import Manifest
from gapship_testing import POLICY, KeyPair, noise, run

FILES = {"b.bin": noise(700, seed=1), "a/x.txt": b"x\n", "a/é/y": b"", "Z": b"z", "run.sh": b"#!/bin/sh\n"}


def _write_model(folder: Path) -> None:
    for rel, data in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "run.sh").chmod(0o755)


def _write_spec(spec: Path, source: str) -> None:
    spec.parent.mkdir(parents=True, exist_ok=True)
    (spec.parent / "policy.toml").write_bytes(POLICY)
    spec.write_text(f'[bundle]\nname = "demo"\nversion = "1.0.0"\n[[model]]\nname = "tiny"\nsource = "{source}"\n'
                    '[safeguards]\nsource = "policy.toml"\n')


def _walked_as_before(source: Path) -> list[tuple[str, str, int, int]]:
    """The walk as it was written with a Path per file, to compare against."""
    out = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(source).as_posix()
            st = full.lstat()
            out.append((str(full), f"models/tiny/{rel}", st.st_size, 0o755 if st.st_mode & 0o111 else 0o644))
    return sorted(out, key=lambda f: f[1].encode("utf-8", "surrogateescape"))


def _as_tuples(files: Iterator[SourceFile]) -> list[tuple[str, str, int, int]]:
    return [(f.source, f.path, f.size, f.mode) for f in files]


@pytest.mark.parametrize(("spec", "source"), [
    ("spec.toml", "model"),  # relative to a relative spec path
    ("spec.toml", "./model/"),
    ("spec.toml", "other/../model"),
    ("deep/er/spec.toml", "../../model"),
    ("model/spec.toml", "."),  # the spec's own folder: spec.toml and policy.toml are model files too
    ("spec.toml", "ABSOLUTE"),
])
def test_same_files_whichever_way_the_source_is_spelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        spec: str, source: str) -> None:
    monkeypatch.chdir(tmp_path)
    _write_model(tmp_path / "model")
    (tmp_path / "other").mkdir()
    _write_spec(Path(spec), str(tmp_path / "model") if source == "ABSOLUTE" else source)
    loaded = load_spec(Path(spec))
    models, policy = collect_sources(loaded)
    assert (models.kind, models.name, policy.kind) == ("model", "tiny", "safeguards")
    assert _as_tuples(iter(models)) == _walked_as_before(loaded.models[0].source)
    assert _as_tuples(iter(policy)) == [(str(loaded.safeguards), "safeguards/policy.toml", len(POLICY), 0o644)]
    assert models.size == sum(f[2] for f in _walked_as_before(loaded.models[0].source))


def test_adding_dependencies_later_gives_what_collecting_them_at_once_gives(tmp_path: Path) -> None:
    _write_model(tmp_path / "model")
    _write_spec(tmp_path / "spec.toml", "model")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "w.whl").write_bytes(b"PK")
    deps = FrozenDependencies(files=((tmp_path / "wheels" / "w.whl", "dependencies/wheels/w.whl"),),
                              target=Target("3.11", "cp", ("linux_x86_64",)), pins=(), bootstrap=())
    spec = load_spec(tmp_path / "spec.toml")
    at_once = collect_sources(spec, deps)
    later = add_dependencies(spec, collect_sources(spec), deps)
    assert [(g.kind, g.name, _as_tuples(iter(g))) for g in later] == \
           [(g.kind, g.name, _as_tuples(iter(g))) for g in at_once]
    assert [g.kind for g in later] == ["model", "safeguards", "dependencies"]


def test_build_walks_and_stats_each_model_file_once(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI checks the sources before freezing dependencies and hands what it found to the build:
    one walk of the tree and one lstat per file, not one per pass."""
    _write_model(tmp_path / "model")
    _write_spec(tmp_path / "spec.toml", "model")
    walks: list[str] = []
    stats: list[str] = []
    real_walk, real_lstat = os.walk, os.lstat

    def walk(top: str | os.PathLike[str], *args: object, **kwargs: object) -> Iterator[tuple[str, list[str], list[str]]]:
        walks.append(os.fspath(top))
        return real_walk(top, *args, **kwargs)  # type: ignore[arg-type]

    def lstat(path: str | os.PathLike[str], *args: object, **kwargs: object) -> os.stat_result:
        stats.append(os.fspath(path))
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "walk", walk)
    monkeypatch.setattr(os, "lstat", lstat)
    out = tmp_path / "out"
    result = run("build", tmp_path / "spec.toml", "--out", out, "--key", make_key("release").private,
                 "--chunk-size", "1KiB")
    assert result.exit_code == 0, result.stderr
    model = tmp_path / "model"
    assert walks == [str(model)]
    files = {str(model / rel) for rel in FILES}
    assert sorted(p for p in stats if p in files) == sorted(files)  # (os.walk also lstats the folders)
    manifest = Manifest.from_bytes((out / "manifest.json").read_bytes())
    assert sorted(f.path for f in manifest.files()) == sorted(["safeguards/policy.toml", "sbom/bom.cdx.json",
                                                               *(f"models/tiny/{rel}" for rel in FILES)])
