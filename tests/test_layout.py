"""The layout shows the architecture (docs/architecture.md, "The trusted-base boundary"): checked
statically, by parsing every module of installer/ and bundler/ with :mod:`ast`, without importing any.

- nothing in installer/ imports bundler/ (relative ``..bundler`` or absolute ``gapship.bundler``);
- only installer/cli/ and bundler/cli/ import click or tqdm;
- a module whose name starts with ``_`` (not a dunder) is imported only from inside its own package,
  and a name starting with ``_`` is never imported from another module;
- every package has an ``__init__.py`` with a docstring.

Imports inside functions and under ``TYPE_CHECKING`` count too. The runtime counterpart (``python -m
gapship.installer`` loads no bundler module) is in tests/installer/test_errors.py and tests/cli/.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIDES = {"installer": "gapship.installer", "bundler": "gapship.bundler"}
UI_LIBRARIES = {"click", "tqdm"}


@dataclass(frozen=True)
class Import:
    """One imported module (and, for ``from M import name``, the name), resolved to an absolute name."""

    file: str  # path relative to the repository, for the failure message
    line: int
    source: str  # the statement as written
    module: str  # absolute module name
    name: str | None  # the imported name, for ``from M import name``

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.source}"


def module_name(path: Path, root: Path = ROOT) -> str:
    """installer/cli/_host.py -> gapship.installer.cli._host; installer/cli/__init__.py -> gapship.installer.cli."""
    side, *parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([SIDES[side], *parts])


def is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def imports(source: str, *, module: str, is_package: bool, file: str) -> Iterator[Import]:
    """Every import in ``source`` (the module ``module``), relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, filename=file)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(file, node.lineno, ast.unparse(node), alias.name, None)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield Import(file, node.lineno, ast.unparse(node), target, alias.name)


def modules() -> list[tuple[Path, str]]:
    found = []
    for side in SIDES:
        for path in sorted((ROOT / side).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found.append((path, module_name(path)))
    return found


def all_imports() -> Iterator[tuple[str, Import]]:
    """(importing module, import) for every import in installer/ and bundler/."""
    for path, name in modules():
        file = str(path.relative_to(ROOT))
        for imp in imports(path.read_text(), module=name, is_package=path.name == "__init__.py", file=file):
            yield name, imp


def known_modules() -> set[str]:
    return {name for _, name in modules()}


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# -- the rules, as functions of the imports, so that a test below can check the checker ------------


def bundler_imports_in_installer(found: list[tuple[str, Import]]) -> list[str]:
    return [f"{imp}  (installer/ must import nothing from bundler/)"
            for importer, imp in found
            if in_package(importer, "gapship.installer") and in_package(imp.module, "gapship.bundler")]


def ui_imports_outside_cli(found: list[tuple[str, Import]]) -> list[str]:
    allowed = ("gapship.installer.cli", "gapship.bundler.cli")
    return [f"{imp}  (only installer/cli/ and bundler/cli/ import {imp.module.split('.')[0]})"
            for importer, imp in found
            if imp.module.split(".")[0] in UI_LIBRARIES and not any(in_package(importer, p) for p in allowed)]


def private_imports_across_packages(found: list[tuple[str, Import]], known: set[str]) -> list[str]:
    problems = []
    for importer, imp in found:
        target = imp.module
        if imp.name and f"{target}.{imp.name}" in known:  # `from . import _host` imports a module
            target, name = f"{target}.{imp.name}", None
        else:
            name = imp.name
        parts = target.split(".")
        for i, part in enumerate(parts):
            package = ".".join(parts[:i])
            if is_private(part) and not in_package(importer, package):
                problems.append(f"{imp}  ({'.'.join(parts[: i + 1])} is private to {package})")
                break
        else:
            if name and is_private(name) and importer != target:
                problems.append(f"{imp}  ({name} is private to {target})")
    return problems


def packages_without_docstring(root: Path = ROOT) -> list[str]:
    problems = []
    for side in SIDES:
        for folder in sorted(p for p in (root / side).rglob("*") if p.is_dir() and p.name != "__pycache__"):
            init = folder / "__init__.py"
            rel = str(folder.relative_to(root))
            if not any(folder.glob("*.py")):
                continue
            if not init.exists():
                problems.append(f"{rel}/ has no __init__.py")
            elif not ast.get_docstring(ast.parse(init.read_text())):
                problems.append(f"{rel}/__init__.py has no docstring (say what the package owns)")
        if not ast.get_docstring(ast.parse((root / side / "__init__.py").read_text())):
            problems.append(f"{side}/__init__.py has no docstring")
    return sorted(set(problems))


# -- the tree as it is ------------------------------------------------------------------------------


def test_installer_imports_nothing_from_bundler() -> None:
    problems = bundler_imports_in_installer(list(all_imports()))
    assert not problems, "\n".join(problems)


def test_only_the_cli_packages_import_click_or_tqdm() -> None:
    problems = ui_imports_outside_cli(list(all_imports()))
    assert not problems, "\n".join(problems)


def test_private_modules_and_names_stay_in_their_package() -> None:
    problems = private_imports_across_packages(list(all_imports()), known_modules())
    assert not problems, "\n".join(problems)


def test_every_package_has_an_init_with_a_docstring() -> None:
    problems = packages_without_docstring()
    assert not problems, "\n".join(problems)


def test_the_walk_sees_both_sides() -> None:
    names = known_modules()
    assert {"gapship.installer.trust", "gapship.installer.cli._host", "gapship.bundler.cli.main"} <= names


# -- the checker itself: each rule catches a planted violation ----------------------------------------


def planted(source: str, module: str, *, is_package: bool = False) -> list[tuple[str, Import]]:
    return [(module, imp) for imp in imports(source, module=module, is_package=is_package, file="planted.py")]


@pytest.mark.parametrize("source", [
    "from ..bundler.keys import SigningKey",
    "from ...bundler import build",
    "import gapship.bundler.sign",
    "def f():\n    from gapship.bundler.spec import load_spec",
])
def test_checker_catches_installer_importing_bundler(source: str) -> None:
    module = "gapship.installer.host.audit" if source.startswith("from ...") else "gapship.installer.trust"
    problems = bundler_imports_in_installer(planted(source, module))
    assert len(problems) == 1 and problems[0].startswith("planted.py:") and "bundler" in problems[0]


def test_checker_allows_bundler_importing_installer() -> None:
    assert not bundler_imports_in_installer(planted("from ..installer.trust import TrustStore", "gapship.bundler.roots"))


@pytest.mark.parametrize("source", ["import click", "from tqdm import tqdm", "import click.testing"])
def test_checker_catches_ui_library_outside_cli(source: str) -> None:
    assert ui_imports_outside_cli(planted(source, "gapship.installer.safeguards"))
    assert not ui_imports_outside_cli(planted(source, "gapship.installer.cli.verify"))
    assert not ui_imports_outside_cli(planted(source, "gapship.bundler.cli.build"))


@pytest.mark.parametrize("source, module, known, refused", [
    ("from ._host import host_options", "gapship.installer.cli.verify", set(), False),
    ("from ..cli._host import host_options", "gapship.installer.deploy.install", set(), True),
    ("from ...installer.cli._host import HostContext", "gapship.bundler.cli.build", set(), True),
    ("from . import _host", "gapship.installer.cli.group", {"gapship.installer.cli._host"}, False),
    ("from .cli import _host", "gapship.installer.trust", {"gapship.installer.cli._host"}, True),
    ("from .extract import _HeaderCheck", "gapship.installer.deploy.install", set(), True),
    ("from .. import __version__", "gapship.installer.deploy.install", set(), False),
])
def test_checker_keeps_private_modules_and_names_in_their_package(source: str, module: str, known: set[str],
                                                                   refused: bool) -> None:
    assert bool(private_imports_across_packages(planted(source, module), known)) == refused


def test_checker_catches_a_package_without_docstring(tmp_path: Path) -> None:
    for side in SIDES:
        (tmp_path / side / "sub").mkdir(parents=True)
        (tmp_path / side / "__init__.py").write_text('"""A side."""\n')
        (tmp_path / side / "sub" / "mod.py").write_text("")
    (tmp_path / "installer" / "sub" / "__init__.py").write_text("from __future__ import annotations\n")
    assert packages_without_docstring(tmp_path) == [
        "bundler/sub/ has no __init__.py",
        "installer/sub/__init__.py has no docstring (say what the package owns)",
    ]
