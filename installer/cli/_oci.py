"""The registry options shared by ``push``, ``pull``, ``install`` and ``verify`` (docs/cli.md, docs/oci.md),
and the ``BUNDLE`` argument that is a directory or an ``oci://`` reference."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from ..oci.reference import Reference, is_oci, parse_reference

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RegistryOptions:
    plain_http: bool
    ca_file: Path | None
    registry_config: Path | None
    jobs: int
    use_proxy_env: bool

    def client(self, ref: Reference) -> Any:
        from ..oci.auth import load_credentials
        from ..oci.client import ClientOptions, RegistryClient

        credentials = load_credentials(ref.host, config=self.registry_config)
        return RegistryClient(ref, ClientOptions(plain_http=self.plain_http, ca_file=self.ca_file,
                                                 use_proxy_env=self.use_proxy_env, credentials=credentials))


class BundleOrReference(click.ParamType):  # type: ignore[type-arg]
    """A bundle directory (a Path) or an ``oci://`` reference (a :class:`Reference`)."""

    name = "BUNDLE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (Path, Reference)):
            return value
        text = str(value)
        return parse_reference(text) if is_oci(text) else Path(text)


bundle_or_reference = click.argument("bundle", type=BundleOrReference())

_OPTIONS = (
    click.option("--plain-http", is_flag=True,
                 help="Talk HTTP, not HTTPS, to the registry (refused unless it is a loopback address)."),
    click.option("--ca-file", type=click.Path(path_type=Path), default=None,
                 help="Trust only this PEM CA for the registry's TLS certificate (the enclave's CA)."),
    click.option("--registry-config", type=click.Path(path_type=Path), default=None,
                 help="Registry credentials in docker's config.json format (default: ~/.docker/config.json)."),
    click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True,
                 help="Parallel blob transfers."),
    click.option("--use-proxy-env", is_flag=True,
                 help="Reach the registry through the proxy the environment names (ignored otherwise)."),
)


def registry_options(f: F) -> F:
    """Add the registry options; the command gets them as one ``registry`` argument."""

    @functools.wraps(f)
    def run(*args: Any, plain_http: bool, ca_file: Path | None, registry_config: Path | None, jobs: int,
            use_proxy_env: bool, **kwargs: Any) -> Any:
        options = RegistryOptions(plain_http, ca_file, registry_config, jobs, use_proxy_env)
        return f(*args, registry=options, **kwargs)

    for option in reversed(_OPTIONS):
        run = option(run)
    return run  # type: ignore[return-value]


@contextmanager
def opened(bundle: Path | Reference, registry: RegistryOptions) -> Iterator[Path]:
    """A bundle directory as it is, or an ``oci://`` artifact opened as one (its chunks streaming from
    the registry while the block runs: gapship.installer.oci.transfer.registry_bundle)."""
    if isinstance(bundle, Path):
        yield bundle
        return
    from ..oci.transfer import registry_bundle

    with registry_bundle(registry.client(bundle), jobs=registry.jobs) as root:
        yield root
