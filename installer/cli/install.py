"""``gapship install``: verify, decide for the site, then stream the bundle into
``PREFIX/<name>/<version>`` and switch ``current`` (docs/cli.md, docs/site-admin.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..bundle.files import read_raw_bundle
from ..bundle.parity import damage, load_parity
from ..bundle.verify import scan_chunks
from ..errors import GapshipError, IntegrityError, UsageError
from ..host.state import HostState
from ..deploy.install import install as install_bundle
from ..host.hfcache import Published, check_publishable, entries_of
from ..provenance import load_provenance
from ..trust import Allowances, TrustStore, VerifiedManifest, verify_manifest
from ._hf import chosen_cache, hf_cache_option, publish_locked, published_lines
from ._host import HostContext, host_options
from ._oci import RegistryOptions, bundle_or_reference, opened, registry_options
from ..oci.reference import Reference
from .group import cli, emit, human_size, output_options, progress_bar, signer_names, trust_fields, \
    trust_lines, trust_option, warn


@cli.command()
@bundle_or_reference
@trust_option
@click.option("--prefix", required=True, type=click.Path(path_type=Path), help="Install root.")
@click.option("--allow-reinstall", is_flag=True,
              help="Install a version equal to the highest installed one (logged).")
@click.option("--allow-downgrade", is_flag=True,
              help="Install a version older than the highest installed one (logged; the floor stays).")
@click.option("--python", "python", metavar="PYTHON", default=None,
              help="Interpreter for the bundle's dependencies venv (default: the one running gapship).")
@click.option("--repair", "repair_first", is_flag=True,
              help="First rebuild lost or damaged chunks from the bundle's parity, in place (needs gapship[parity]).")
@click.option("--compile/--no-compile", "compile_bytecode", default=False,
              help="Compile the venv's Python files to bytecode, on every core (default: no; Python then compiles "
                   "on import, and caches the result where it may write).")
@hf_cache_option
@output_options
@registry_options
@host_options
def install(bundle: Path | Reference, trust_dir: Path, prefix: Path, allow_reinstall: bool, allow_downgrade: bool,
            python: str | None, repair_first: bool, compile_bytecode: bool, hf_cache: Path | None, as_json: bool,
            progress: bool | None, registry: RegistryOptions, host: HostContext) -> None:
    """Verify BUNDLE and install it under PREFIX/<name>/<version>, then switch PREFIX/<name>/current.

    Bundled Python dependencies go into PREFIX/<name>/<version>/venv, installed offline. Refuses
    (exit 5) a version at or below the highest one installed, an expired bundle, or a host clock
    earlier than a signing time already accepted. On a site host, the bundle's site policy is
    enforced first (docs/safeguards.md). New trust roots the bundle carries are written to the trust
    directory as soon as they verify. With --hf-cache (or the site file's hf_cache), the models of the
    version now current are then published into that Hugging Face cache (docs/huggingface.md). BUNDLE is
    a directory or oci://HOST[:PORT]/REPO:TAG, whose chunks then stream from the registry (docs/oci.md)."""
    if isinstance(bundle, Reference) and repair_first:
        raise UsageError("--repair rebuilds chunks of a bundle directory; a registry serves whole blobs",
                         subject="--repair")
    with opened(bundle, registry) as root:
        _install(root, trust_dir, prefix, allow_reinstall, allow_downgrade, python, repair_first, compile_bytecode,
                 hf_cache, as_json, progress, host)


def _install(bundle: Path, trust_dir: Path, prefix: Path, allow_reinstall: bool, allow_downgrade: bool,
             python: str | None, repair_first: bool, compile_bytecode: bool, hf_cache: Path | None, as_json: bool,
             progress: bool | None, host: HostContext) -> None:
    trust = TrustStore.from_dir(trust_dir)
    state = HostState.for_prefix(prefix)
    allow = Allowances(reinstall=allow_reinstall, downgrade=allow_downgrade)
    # The clock is checked now; the floor under the install lock, against the state and the versions the
    # prefix holds, where an install interrupted between raising the floor and switching can be told
    # from a finished one (installer/deploy/install.py).
    verified = host.note(verify_manifest(read_raw_bundle(bundle), trust=trust, state=state.load().time_only(),
                                         allow=allow, persist_root=trust.persist))
    if repair_first:
        _repair(bundle, verified, progress)
    try:
        decision = host.decide(bundle, verified, trust_dir=trust_dir)
        cache = chosen_cache(hf_cache, host)
        if cache is not None:  # a repo id taken by something else: refused before anything is installed
            check_publishable(cache, bundle=verified.manifest.name, entries=entries_of(
                verified.manifest, manifest_bytes=verified.manifest_bytes,
                installed=lambda model: decision is None or model in decision.enabled))
        provenance = load_provenance(bundle, verified)  # signed beside the manifest: checked before any write
        with progress_bar(verified.manifest.payload_size, "install", progress) as bar:
            result = install_bundle(bundle, verified, prefix=prefix, progress=bar, state=state, site=decision,
                                    python=python, record_intent=host.intent,
                                    compile_bytecode=compile_bytecode, provenance=provenance)
    except IntegrityError as e:
        if repair_first or not _repairable(bundle, verified):
            raise
        raise IntegrityError(f"{e.message}; the bundle's parity can rebuild what is lost: run gapship repair "
                             f"{bundle} (or install --repair)", subject=e.subject) from None
    published = _publish(cache, prefix, result.name)
    was = f"; was {result.previous}" if result.previous and result.previous != result.version else ""
    verb = "installed" if result.status == "installed" else "already installed"
    if not as_json:
        for override in result.overrides:
            warn(f"--allow-{override} was needed; logged in {state.path}")
    venv = [f"dependencies in {result.venv}"] if result.venv is not None else []
    emit(as_json, {**result.to_dict(), **trust_fields(verified), "site": host.summary(),
                   "hf_cache": published.to_dict() if published else None}, [
        f"{verb} {result.name} {result.version} at {result.path} ({result.files} files, {human_size(result.bytes)})",
        *venv,
        *_shared_lines(result.to_dict()),
        f"current -> {result.version}{was}; signed by {signer_names(verified.trust or trust, result.signers)}",
        *trust_lines(verified, persisted=True),
        *published_lines(published),
        *host.lines(),
    ])


def _publish(cache: Path | None, prefix: Path, name: str) -> Published | None:
    """After the switch of ``current`` (an upgrade, a rollback with --allow-downgrade, a reinstall)."""
    if cache is None:
        return None
    try:
        return publish_locked(cache, prefix, name)
    except GapshipError as e:  # installed and current: say so, and how to finish
        raise type(e)(f"installed {name}, but not published in the Hugging Face cache: {e.message}; run the "
                      "install again to publish it", subject=e.subject) from None


def _repair(bundle: Path, verified: VerifiedManifest, progress: bool | None) -> None:
    """``--repair``: rebuild in place (only the lost chunks are written: no second copy of the payload)."""
    from ..bundle.repair import NotWhole, repair  # the erasure code's tables: only when asked for

    parity = load_parity(bundle, verified)
    if parity is None:
        raise IntegrityError(f"{bundle} has no parity/: --repair has nothing to repair from", subject="parity")
    with progress_bar(verified.manifest.payload_size, "repair", progress) as bar:
        result = repair(bundle, verified, parity, progress=bar)
    if not result.whole:
        raise NotWhole(result)
    for name in result.rebuilt:
        warn(f"rebuilt {name} from the parity chunks")


def _repairable(bundle: Path, verified: VerifiedManifest) -> bool:
    """Whether the bundle's signed parity can rebuild every bad chunk (for install's refusal message)."""
    try:
        parity = load_parity(bundle, verified)
        if parity is None:
            return False
        problems = scan_chunks(bundle, verified, parity=parity)
    except GapshipError:
        return False
    found = damage(problems, parity.layout)
    return bool(found.groups) and found.repairable and not found.extra


def _shared_lines(result: dict[str, object]) -> list[str]:
    """A delta's base, and the files made from installed ones (installer/host/share.py)."""
    base, shared = result.get("base"), result.get("shared")
    lines = [f"delta of {base['name']} {base['version']}"] if isinstance(base, dict) else []
    if isinstance(shared, dict) and any(shared.values()):
        lines.append("shared with installed versions: " + ", ".join(f"{n} by {k}" for k, n in shared.items() if n))
    return lines
