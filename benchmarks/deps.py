"""The dependency step: a serving stack's wheels into a fresh venv, offline (``run.py --only deps``).

The wheel set is real: numpy, safetensors, tokenizers, huggingface-hub and jinja2 with everything they
pull in, downloaded once from the package index with ``pip download --only-binary=:all:`` into a cache
folder (``--deps-cache``, default ``~/.cache/gapship-bench/wheels-pyX.Y``) and reused after that; the
script says so when it downloads. ``--smoke`` uses small made-up wheels written here instead (no
network). A bundle is built from those wheels (``gapship build --offline``); its ``dependencies/``
folder is taken out of the chunks once, untimed, so the other contenders install the same bytes from
the same lock. Contenders, each into a new venv of the same Python:

  gapship install                 the whole install of that bundle (signature, chunks, files, syncfs,
                                  venv, wheels; no bytecode, its default)
  gapship install --compile       the same, and bytecode on every core
  python -m venv && pip install --no-index      (pip compiles bytecode by default)
  uv venv && uv pip install --offline           with an empty cache (a new --cache-dir every run),
                                  without and with --compile-bytecode, when uv is on PATH or beside
                                  this python (``pip install uv`` into the benchmark's venv); and,
                                  for reference only, the first followed by ``sync`` (uv flushes
                                  nothing, gapship's install flushes before ``current`` switches)

Public tools only: python, pip, tar, and uv when it is there.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

STACK = ("numpy", "safetensors", "tokenizers", "huggingface-hub", "jinja2")
PIP = "python -m venv && pip install --no-index"
UV = "uv venv && uv pip install --offline (empty cache)"
UV_COMPILE = "uv venv && uv pip install --offline --compile-bytecode (empty cache)"
UV_SYNC = "uv venv && uv pip install --offline (empty cache); sync"
COMPILE = "gapship install --compile"


def default_cache() -> Path:
    return Path.home() / ".cache" / "gapship-bench" / f"wheels-py{sys.version_info[0]}.{sys.version_info[1]}"


def find_uv() -> str | None:
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv")


def real_wheels(cache: Path, say: Callable[[str], None]) -> tuple[Path, str]:
    """The serving stack's wheels for this Python and platform, downloaded once into ``cache``."""
    done = cache / ".complete"
    if not done.exists():
        say(f"downloading the wheel set ({', '.join(STACK)} and their dependencies) from the package index "
            f"into {cache} (once; later runs reuse it) ...")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--only-binary=:all:", "-d", str(cache), *STACK], check=True)
        done.write_text("\n".join(STACK) + "\n")
    wheels = sorted(cache.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    return cache, (f"{len(wheels)} real wheels ({', '.join(STACK)} and what they pull in), {size / 1024**2:.0f} MiB, "
                   f"from the package index, cached in {cache}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def fake_wheels(folder: Path, count: int = 6, modules: int = 40) -> tuple[Path, str]:
    """``count`` small made-up pure wheels (``modules`` modules each, a console script each)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        dist, info = f"gsbench{i}", f"gsbench{i}-1.0.dist-info"
        files = {f"gsbench{i}/m{j:03d}.py": f"VALUE = {j}\n".encode() * 50 for j in range(modules)}
        files[f"gsbench{i}/__init__.py"] = b"def main():\n    return 0\n"
        files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n".encode()
        files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        files[f"{info}/entry_points.txt"] = f"[console_scripts]\ngsbench{i} = gsbench{i}:main\n".encode()
        record = "".join(f"{p},sha256={_b64(d)},{len(d)}\n" for p, d in files.items()) + f"{info}/RECORD,,\n"
        with zipfile.ZipFile(folder / f"{dist}-1.0-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as zf:
            for path, data in files.items():
                zf.writestr(path, data)
            zf.writestr(f"{info}/RECORD", record)
    return folder, f"{count} small made-up wheels ({modules} modules each; --smoke)"


def host_platform() -> str:
    from packaging import tags

    found = [t.platform for t in tags.sys_tags()]
    return next((p for p in found if p.startswith(("manylinux_", "musllinux_"))), found[0])


def write_spec(root: Path, wheels: Path) -> Path:
    """A spec whose dependencies are every distribution in ``wheels``, and a one-file model."""
    from packaging.utils import parse_wheel_filename

    names = sorted({str(parse_wheel_filename(w.name)[0]) for w in wheels.glob("*.whl")})
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "config.json").write_text('{"bench": true}\n')
    (root / "policy.toml").write_text('schema_version = 1\nprohibited_uses = ["weapons targeting"]\n\n'
                                      '[sites.bench]\nsafeguards = ["audit-log"]\n\n[models.deps]\nsites = ["bench"]\n')
    (root / "requirements.txt").write_text("".join(f"{n}\n" for n in names))
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (root / "spec.toml").write_text(
        '[bundle]\nname = "bench-deps"\nversion = "1.0.0"\n\n[[model]]\nname = "deps"\nsource = "model"\n\n'
        '[safeguards]\nsource = "policy.toml"\n\n[dependencies]\nrequirements = "requirements.txt"\n'
        f'python = "{python}"\nplatforms = ["{host_platform()}"]\nfind_links = ["{wheels}"]\n')
    return root / "spec.toml"


def contenders(env: Any, bundle: Path, *, make: Callable[..., Any], shell: Callable[[str], list[str]],
               q: Callable[[Path | str], str], bundle_paths: Callable[[Path], list[Path]]) -> list[Any]:
    """The contenders (run.py's ``Contender``, passed in as ``make``); ``bundle`` was built already."""
    src = env.work / "data" / "deps-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    chunks = " ".join(q(c) for c in sorted((bundle / "chunks").iterdir()))
    subprocess.run(shell(f"cat {chunks} | tar -xf - -C {q(src)} dependencies/"), check=True)
    wheels, lock = src / "dependencies" / "wheels", src / "dependencies" / "requirements.lock"
    inputs = [lock, *sorted(wheels.iterdir())]
    out = env.work / "out"
    prefix, venv, cache = out / "prefix-deps", out / "venv-deps", out / "uv-cache"
    py = q(sys.executable)
    pip_env = "env PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1"
    gapship = [*env.gapship, "install", str(bundle), "--trust", str(env.trust), "--prefix", str(prefix), "--no-progress"]
    rows = [
        make("install", "gapship install", gapship, bundle_paths(bundle), outputs=[prefix], gapship=True),
        make("install", COMPILE, [*gapship, "--compile"], bundle_paths(bundle), outputs=[prefix]),
        make("install", PIP, shell(f"{py} -m venv {q(venv)} && {pip_env} {q(venv / 'bin' / 'python')} -m pip install "
                                   f"-q --isolated --disable-pip-version-check --no-index --find-links {q(wheels)} "
                                   f"--require-hashes -r {q(lock)}"), inputs, outputs=[venv]),
    ]
    uv = find_uv()
    if uv is not None:
        install = (f"{q(uv)} venv -q --python {py} {q(venv)} && {q(uv)} pip install -q --python "
                   f"{q(venv / 'bin' / 'python')} --offline --no-index --find-links {q(wheels)} --require-hashes "
                   f"--cache-dir {q(cache)} -r {q(lock)}")
        rows.append(make("install", UV, shell(install), inputs, outputs=[venv, cache]))
        # uv flushes nothing; gapship's install ends with a syncfs before `current` switches. For
        # reference only (no target): the same, followed by a sync, as run.py's 'tar -x; sync' row.
        rows.append(make("install", UV_SYNC, shell(install + " && sync"), inputs, outputs=[venv, cache]))
        rows.append(make("install", UV_COMPILE, shell(install + " --compile-bytecode"), inputs, outputs=[venv, cache]))
    return rows


def targets(rows: list[dict[str, object]], make: Callable[..., Any]) -> list[Any]:
    """Issue 16's dependency targets: >= 5x python -m venv && pip install --no-index, and no slower
    than uv with an empty cache, like for like (gapship against uv's default, both without bytecode;
    gapship --compile against uv --compile-bytecode). The pip row compiles bytecode (its default):
    a fifth target compares it with gapship --compile, like for like too."""
    def t(name: str) -> float | None:
        found = [float(r["median_s"]) for r in rows if r["dataset"] == "deps" and r["contender"] == name]  # type: ignore[arg-type]
        return found[0] if found else None

    ours, compiled = t("gapship install"), t(COMPILE)
    out = []
    for text, theirs, mine, goal in (
        ("deps install vs python -m venv && pip install --no-index, speed-up >= 5", t(PIP), ours, 5.0),
        ("deps install --compile vs python -m venv && pip install --no-index (both compile), speed-up >= 5",
         t(PIP), compiled, 5.0),
        ("deps install vs uv pip install --offline, speed-up >= 1", t(UV), ours, 1.0),
        ("deps install --compile vs uv pip install --offline --compile-bytecode, speed-up >= 1", t(UV_COMPILE),
         compiled, 1.0),
    ):
        if theirs is not None and mine is not None:
            out.append(make(text, theirs / mine, goal))
    return out


def total_bytes(bundle: Path) -> int:
    """The wheels' bytes (for MB/s)."""
    import json

    manifest = json.loads((bundle / "manifest.json").read_bytes())
    return sum(f["size"] for c in manifest["components"] if c["kind"] == "dependencies" for f in c["files"])
