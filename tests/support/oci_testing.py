"""Registries for the OCI tests: CNCF distribution (Debian's ``docker-registry``) started on 127.0.0.1
with TLS from a CA made here and htpasswd auth, a plain one, and a small in-process hostile registry
that serves a real bundle's artifact with one fault at a time."""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER, PASSWORD = "fleet", "s3cret-pass"


def have_registry() -> str | None:
    """Why the real-registry tests cannot run here, or None."""
    for tool in ("docker-registry", "htpasswd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs docker-registry, skopeo and apache2-utils)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TestCA:
    cert: Path
    key: Path
    server_cert: Path
    server_key: Path


def make_ca(folder: Path, *, name: str = "gapship test CA") -> TestCA:
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it (PEM files)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = TestCA(folder / "ca.pem", folder / "ca.key", folder / "server.pem", folder / "server.key")
    out.cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for path, k in ((out.key, ca_key), (out.server_key, key)):
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return out


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    storage: Path
    process: subprocess.Popen[bytes]
    ca: TestCA | None = None

    def url(self, repo: str, tag: str = "1.0") -> str:
        return f"oci://{self.host}/{repo}:{tag}"

    def options(self, config: Path | None = None) -> list[str]:
        """The CLI options that reach this registry (its CA and credentials file, or --plain-http)."""
        if self.ca is None:
            return ["--plain-http"]
        return ["--ca-file", str(self.ca.cert), *(["--registry-config", str(config)] if config else [])]

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def registry_config(path: Path, host: str, *, user: str = USER, password: str = PASSWORD) -> Path:
    """A docker config.json with an auths entry for ``host``."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def start_registry(folder: Path, *, tls: bool) -> Registry:
    """``docker-registry serve`` on a free 127.0.0.1 port; with ``tls``, a test CA and htpasswd auth."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    storage = folder / "storage"
    lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true", "storage:",
             "  filesystem:", f"    rootdirectory: {storage}", "  delete:", "    enabled: true", "http:",
             f"  addr: 127.0.0.1:{port}", f"  secret: {os.urandom(8).hex()}"]
    ca = None
    if tls:
        ca = make_ca(folder / "tls")
        lines += ["  tls:", f"    certificate: {ca.server_cert}", f"    key: {ca.server_key}"]
        htpasswd = folder / "htpasswd"
        htpasswd.write_bytes(subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                                            capture_output=True).stdout)
        lines += ["auth:", "  htpasswd:", "    realm: gapship-test", f"    path: {htpasswd}"]
    (folder / "config.yml").write_text("\n".join(lines) + "\n")
    log = open(folder / "registry.log", "wb")
    process = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(folder / 'registry.log').read_text()[-500:]}")
            time.sleep(0.05)
    return Registry(host=f"127.0.0.1:{port}", storage=storage, process=process, ca=ca)


# -- a hostile registry ------------------------------------------------------------------------------------


@dataclass
class Hostile:
    """Serves one artifact (``manifest`` bytes and ``blobs`` by digest) under every repository and tag;
    ``fault(handler, digest) -> bool`` may answer a blob request itself (True) instead."""

    manifest: bytes
    blobs: dict[str, bytes]
    fault: Callable[[http.server.BaseHTTPRequestHandler, str], bool] | None = None
    manifest_fault: Callable[[http.server.BaseHTTPRequestHandler], bool] | None = None
    hits: dict[str, int] = field(default_factory=dict)
    host: str = ""
    token: str | None = None  # with a token: Bearer auth, /token hands it out for USER:PASSWORD


def artifact_of(bundle: Path) -> tuple[bytes, dict[str, bytes]]:
    """The OCI manifest and blobs gapship push would make of ``bundle`` (built with gapship's own layout)."""
    from gapship.installer.oci.artifact import EMPTY_DATA, EMPTY_DIGEST, Layer, build_manifest, media_type_for
    from gapship.installer.oci.transfer import _bundle_blobs
    from gapship.installer.bundle.files import read_raw_bundle
    from gapship.installer.trust import parse_unverified

    m = parse_unverified(read_raw_bundle(bundle))
    blobs = _bundle_blobs(bundle, m)
    layers = [Layer(media_type_for(b.path), b.digest, b.size, b.path, b.index) for b in blobs]
    data = {b.digest: (bundle / b.path).read_bytes() for b in blobs}
    data[EMPTY_DIGEST] = EMPTY_DATA
    return build_manifest(layers, name=m.name, version=m.version), data


@contextmanager
def hostile_registry(state: Hostile) -> Iterator[Hostile]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return None

        def do_HEAD(self) -> None:
            self.do_GET(head=True)

        def do_GET(self, head: bool = False) -> None:
            path = self.path.split("?", 1)[0]
            state.hits[path] = state.hits.get(path, 0) + 1
            if state.token is not None and not self.authorized(path, head):
                return
            if "/manifests/" in path:
                if state.manifest_fault and state.manifest_fault(self):
                    return
                self.answer(200, state.manifest, "application/vnd.oci.image.manifest.v1+json", head)
                return
            if "/blobs/" in path:
                digest = path.rsplit("/", 1)[1]
                if state.fault and state.fault(self, digest):
                    return
                if digest in state.blobs:
                    self.answer(200, state.blobs[digest], "application/octet-stream", head)
                    return
            self.answer(404, b'{"errors":[{"code":"NOT_FOUND"}]}', "application/json", head)

        def authorized(self, path: str, head: bool) -> bool:
            basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if path == "/token":
                if self.headers.get("Authorization") == basic:
                    self.answer(200, json.dumps({"token": state.token}).encode(), "application/json", head)
                else:
                    self.answer(401, b"{}", "application/json", head)
                return False
            if self.headers.get("Authorization") == f"Bearer {state.token}":
                return True
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{state.host}/token",service="test",'
                                                 f'scope="repository:fleet/model:pull"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False

        def answer(self, status: int, body: bytes, kind: str, head: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
