"""A wheel of an installed distribution, rebuilt from its installed files (``--include-gapship``).

gapship bundles *the gapship that is running*, not whatever a source tree or an index holds: the wheel
is rebuilt from the installed distribution's RECORD, so no build backend runs and no source tree is
needed. Files outside site-packages (console scripts, which the target's installer regenerates from
``entry_points.txt``), byte code, and the install-time files of the ``.dist-info`` (RECORD, INSTALLER,
REQUESTED, direct_url.json) are left out; RECORD is written anew. Entries are sorted and dated
1980-01-01, so the same installed files give the same wheel, byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

from packaging.utils import canonicalize_name

from ...installer.errors import UsageError
from ...installer.kit import Malformed, parse_json

_EPOCH = (1980, 1, 1, 0, 0, 0)
_INSTALL_TIME = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def wheel_from_installed(name: str, out_dir: Path, *, site: Path | None = None) -> Path:
    """Write ``<name>-<version>-<tags>.whl`` for the distribution installed in ``site`` (default: the
    site-packages this module runs from) into ``out_dir``; return its path."""
    # site-packages is as many folders above this file as its package has parts (gapship.bundler.deps)
    where = site or Path(__file__).resolve().parents[len(__name__.split(".")) - 1]
    dist = next(iter(importlib.metadata.distributions(name=name, path=[str(where)])), None)
    if dist is None:
        raise UsageError(f"{name} is not installed as a distribution in {where} (running from a source tree?); "
                         f"install it with pip to bundle its wheel", subject=name)
    _refuse_editable(dist, name)
    version = dist.version
    info = f"{canonicalize_name(name).replace('-', '_')}-{version}.dist-info"
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise UsageError(f"{name}'s installed WHEEL file names no tag", subject=name)
    members = sorted((_rename_info(arcname, info), source) for arcname, source in _members(dist, where))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{canonicalize_name(name).replace('-', '_')}-{version}-{_compressed(tags)}.whl"
    record = []
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, source in members:
            data = source.read_bytes()
            _add(zf, arcname, data, source.stat().st_mode & 0o111)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        _add(zf, f"{info}/RECORD", ("\n".join(record) + "\n").encode(), 0)
    return target


def _refuse_editable(dist: importlib.metadata.Distribution, name: str) -> None:
    raw = dist.read_text("direct_url.json")
    try:
        editable = bool(raw and parse_json(raw, source="direct_url.json", error=Malformed)
                        .get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):
        editable = False
    if editable:
        raise UsageError(f"{name} is installed in editable mode; its installed files are not a wheel's. "
                         f"Install it normally (pip install .) to bundle it", subject=name)


def _members(dist: importlib.metadata.Distribution, site: Path) -> list[tuple[str, Path]]:
    out = []
    for rel in dist.files or ():
        arcname = rel.as_posix()
        parts = arcname.split("/")
        if parts[0] == ".." or "__pycache__" in parts or arcname.endswith(".pyc"):
            continue
        if parts[0].endswith(".dist-info") and len(parts) == 2 and parts[1] in _INSTALL_TIME:
            continue
        source = site / arcname
        if not source.is_file():
            raise UsageError(f"{dist.metadata['Name']}: installed file {arcname} is missing", subject=arcname)
        out.append((arcname, source))
    return out


def _rename_info(arcname: str, info: str) -> str:
    """The .dist-info folder's name must match the wheel's file name (PEP 427)."""
    head, _, rest = arcname.partition("/")
    return f"{info}/{rest}" if head.endswith(".dist-info") else arcname


def _add(zf: zipfile.ZipFile, arcname: str, data: bytes, executable: int) -> None:
    entry = zipfile.ZipInfo(arcname, date_time=_EPOCH)
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry.external_attr = ((0o755 if executable else 0o644) | 0o100000) << 16
    zf.writestr(entry, data)


def _compressed(tags: list[str]) -> str:
    """``py2-none-any`` and ``py3-none-any`` -> ``py2.py3-none-any`` (PEP 425 compressed tag sets)."""
    parts = [tag.split("-") for tag in tags]
    return "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))
