"""A registry that lies or misbehaves, one way per test (docs/oci.md, "What is checked"): an
in-process HTTP server on 127.0.0.1 serving a real bundle's artifact, with one fault."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from gapship.installer.errors import IntegrityError
from gapship.installer.oci.client import BlobSink, ClientOptions, RegistryClient
from gapship.installer.oci.reference import parse_reference
from gapship_testing import KeyPair, assert_error, run_json
from oci_testing import Hostile, artifact_of, hostile_registry, registry_config, sha256_digest

Fault = Callable[[BaseHTTPRequestHandler, str], bool]


@pytest.fixture
def served(tmp_path: Path, make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
           unique_bundle: Callable[..., Path]) -> tuple[Path, Path, dict[str, object]]:
    key = make_key("release")
    bundle = unique_bundle(key)
    return bundle, make_trust(key), json.loads((bundle / "manifest.json").read_bytes())


def _chunk_digest(manifest: dict[str, object], i: int) -> tuple[str, str]:
    chunk = manifest["chunks"][i]  # type: ignore[index]
    return f"sha256:{chunk['hash']}", f"chunks/{chunk['name']}"


def _install(state: Hostile, trust: Path, prefix: Path, *extra: str) -> tuple[int, dict[str, object]]:
    return run_json("install", f"oci://{state.host}/fleet/model:1.0", "--plain-http", "--trust", trust,
                    "--prefix", prefix, *extra)


def _nothing_installed(prefix: Path) -> None:
    assert not (prefix / "demo" / "current").exists()
    assert not (prefix / "demo" / "1.0.0").exists()


def _hostile(bundle: Path, fault: Fault | None = None) -> Hostile:
    manifest, blobs = artifact_of(bundle)
    return Hostile(manifest=manifest, blobs=blobs, fault=fault)


def test_installs_from_a_well_behaved_server(tmp_path: Path, served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, trust, _ = served
    with hostile_registry(_hostile(bundle)) as state:
        code, out = _install(state, trust, tmp_path / "prefix")
    assert code == 0, out


def test_rejects_other_bytes_for_a_digest(tmp_path: Path, served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, trust, manifest = served
    digest, name = _chunk_digest(manifest, 2)
    state = _hostile(bundle)
    good = state.blobs[digest]
    state.blobs[digest] = good[:-1] + bytes([good[-1] ^ 1])
    with hostile_registry(state):
        code, out = _install(state, trust, tmp_path / "prefix")
        assert_error(out, code=3, kind="integrity", subject=name)
        _nothing_installed(tmp_path / "prefix")
        code, out = run_json("verify", f"oci://{state.host}/fleet/model:1.0", "--plain-http", "--trust", trust)
        assert_error(out, code=3, kind="integrity", subject=name)
        code, out = run_json("pull", f"oci://{state.host}/fleet/model:1.0", "--plain-http", "--trust", trust,
                             "--out", tmp_path / "pulled")
        message = assert_error(out, code=3, kind="integrity", subject=name)
        assert "other bytes" in message


def test_verify_names_every_chunk_with_other_bytes(tmp_path: Path, served: tuple[Path, Path, dict[str, object]]) -> None:
    """As the directory's verify does: one pass, every bad chunk in ``problems``, the first as the error."""
    bundle, trust, manifest = served
    state = _hostile(bundle)
    names = []
    for i in (1, 3):
        digest, name = _chunk_digest(manifest, i)
        good = state.blobs[digest]
        state.blobs[digest] = good[:-1] + bytes([good[-1] ^ 1])
        names.append(name)
    with hostile_registry(state):
        code, out = run_json("verify", f"oci://{state.host}/fleet/model:1.0", "--plain-http", "--trust", trust)
    assert_error(out, code=3, kind="integrity", subject=names[0])
    problems: list[dict[str, object]] = out["problems"]  # type: ignore[assignment]
    assert [(p["chunk"], p["problem"]) for p in problems] == [(n, "damaged") for n in names]


def test_rejects_a_redirect_to_another_host(tmp_path: Path, served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, trust, manifest = served
    digest, name = _chunk_digest(manifest, 1)

    def redirect(handler: BaseHTTPRequestHandler, asked: str) -> bool:
        if asked != digest:
            return False
        handler.send_response(307)
        port = handler.server.server_address[1]
        handler.send_header("Location", f"http://localhost:{port}/v2/fleet/model/blobs/{asked}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return True

    with hostile_registry(_hostile(bundle, redirect)) as state:
        code, out = _install(state, trust, tmp_path / "prefix")
    message = assert_error(out, code=7, kind="environment", subject=name)
    assert "another host" in message
    _nothing_installed(tmp_path / "prefix")


def test_follows_a_redirect_on_the_same_registry(tmp_path: Path, served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, trust, manifest = served
    digest, _ = _chunk_digest(manifest, 1)

    def redirect(handler: BaseHTTPRequestHandler, asked: str) -> bool:
        if asked != digest or "moved" in handler.path:
            return False
        handler.send_response(307)
        handler.send_header("Location", f"/v2/fleet/model/blobs/{asked}?moved=1")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return True

    with hostile_registry(_hostile(bundle, redirect)) as state:
        code, out = _install(state, trust, tmp_path / "prefix")
    assert code == 0, out


def test_rejects_an_endless_blob(tmp_path: Path, served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, trust, manifest = served
    digest, name = _chunk_digest(manifest, 0)

    def endless(handler: BaseHTTPRequestHandler, asked: str) -> bool:
        if asked != digest:
            return False
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        try:
            for _ in range(100_000):  # 6 GiB, far more than the reader accepts
                handler.wfile.write(bytes(65536))
        except OSError:
            pass
        handler.close_connection = True
        return True

    with hostile_registry(_hostile(bundle, endless)) as state:
        code, out = _install(state, trust, tmp_path / "prefix")
    message = assert_error(out, code=3, kind="integrity", subject=name)
    assert "longer than" in message
    _nothing_installed(tmp_path / "prefix")


def test_rejects_a_blob_declared_longer_than_signed(tmp_path: Path, served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, trust, manifest = served
    digest, name = _chunk_digest(manifest, 0)

    def longer(handler: BaseHTTPRequestHandler, asked: str) -> bool:
        if asked != digest:
            return False
        handler.send_response(200)
        handler.send_header("Content-Length", str(10**12))
        handler.end_headers()
        handler.close_connection = True
        return True

    with hostile_registry(_hostile(bundle, longer)) as state:
        code, out = _install(state, trust, tmp_path / "prefix")
    message = assert_error(out, code=3, kind="integrity", subject=name)
    assert "more than" in message


def test_rejects_a_truncated_blob(tmp_path: Path, served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, trust, manifest = served
    digest, name = _chunk_digest(manifest, 1)
    state = _hostile(bundle)

    def truncated(handler: BaseHTTPRequestHandler, asked: str) -> bool:
        if asked != digest:
            return False
        data = state.blobs[asked]
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 2])
        handler.close_connection = True
        return True

    state.fault = truncated
    with hostile_registry(state):
        code, out = _install(state, trust, tmp_path / "prefix")
    message = assert_error(out, code=3, kind="integrity", subject=name)
    assert "truncated" in message
    assert state.hits[f"/v2/fleet/model/blobs/{digest}"] == 5  # the first try and four retries
    _nothing_installed(tmp_path / "prefix")


def test_rejects_a_slow_drip(served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, _, manifest = served
    digest, name = _chunk_digest(manifest, 0)
    state = _hostile(bundle)
    size = len(state.blobs[digest])

    def drip(handler: BaseHTTPRequestHandler, asked: str) -> bool:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        try:
            for i in range(60):  # 3 s at most, far slower than the 0.5 s stall window allows
                handler.wfile.write(state.blobs[asked][i:i + 1])
                handler.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass
        handler.close_connection = True
        return True

    state.fault = drip
    with hostile_registry(state):
        client = RegistryClient(parse_reference(f"oci://{state.host}/fleet/model:1.0"),
                                ClientOptions(plain_http=True, stall_seconds=0.5, retries=0))
        with pytest.raises(IntegrityError, match="too slowly") as caught:
            client.get_blob(digest, BlobSink(), size=size, what=name)
        client.close()
    assert caught.value.subject == name


def test_retries_server_errors_and_resets(tmp_path: Path, served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, trust, manifest = served
    busy, _ = _chunk_digest(manifest, 0)
    reset, _ = _chunk_digest(manifest, 1)
    seen: dict[str, int] = {}

    def flaky(handler: BaseHTTPRequestHandler, asked: str) -> bool:
        seen[asked] = seen.get(asked, 0) + 1
        if asked == busy and seen[asked] <= 2:
            handler.send_response(503)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return True
        if asked == reset and seen[asked] == 1:
            handler.connection.shutdown(2)  # a reset mid-request
            handler.close_connection = True
            return True
        return False

    with hostile_registry(_hostile(bundle, flaky)) as state:
        code, out = _install(state, trust, tmp_path / "prefix")
    assert code == 0, out
    assert seen[busy] == 3 and seen[reset] == 2


def test_rejects_another_manifest_for_a_digest_reference(tmp_path: Path,
                                                         served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, trust, _ = served
    state = _hostile(bundle)
    asked = sha256_digest(b"the manifest the site pinned")
    with hostile_registry(state):
        code, out = run_json("install", f"oci://{state.host}/fleet/model@{asked}", "--plain-http", "--trust", trust,
                             "--prefix", tmp_path / "prefix")
    message = assert_error(out, code=3, kind="integrity", subject=asked)
    assert "another manifest" in message


def test_bearer_token_auth(tmp_path: Path, served: tuple[Path, Path, dict[str, object]]) -> None:
    bundle, trust, _ = served
    state = _hostile(bundle)
    state.token = "tok-" + "x" * 20
    with hostile_registry(state):
        creds = registry_config(tmp_path / "config.json", state.host)
        code, out = _install(state, trust, tmp_path / "prefix", "--registry-config", creds)
        assert code == 0, out
        wrong = registry_config(tmp_path / "wrong.json", state.host, password="nope")
        code, out = _install(state, trust, tmp_path / "prefix2", "--registry-config", wrong)
        message = assert_error(out, code=7, kind="environment", subject=state.host)
        assert "refused the credentials" in message


def test_proxy_environment_is_ignored_unless_asked(tmp_path: Path, served: tuple[Path, Path, dict[str, object]],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from oci_testing import free_port

    bundle, trust, _ = served
    dead = f"http://127.0.0.1:{free_port()}"  # a proxy that is not there
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with hostile_registry(_hostile(bundle)) as state:
        code, out = _install(state, trust, tmp_path / "prefix")
        assert code == 0, out  # straight to the registry
        code, out = _install(state, trust, tmp_path / "prefix2", "--use-proxy-env")
    assert code == 7 and "unreachable" in out["error"]["message"], out  # through the (dead) proxy


def test_ca_file_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    """--ca-file goes through the bounded reader: a FIFO there is refused at once (exit 2, naming it),
    before any connection, never waited on. Run in a daemon thread so a blocking read fails the test."""
    import os
    import threading

    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    box: list[tuple[int, dict[str, object]]] = []
    args = ("verify", "oci://registry.invalid/fleet/model:1.0", "--trust", tmp_path, "--ca-file", fifo)
    thread = threading.Thread(target=lambda: box.append(run_json(*args)), daemon=True)
    thread.start()
    thread.join(30)
    assert box, "verify blocked reading a FIFO given as --ca-file"
    code, out = box[0]
    assert code == 2, out
    assert "--ca-file" in assert_error(out, code=2, kind="usage", subject=str(fifo))


def test_ca_file_that_holds_no_certificate_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    code, out = run_json("verify", "oci://registry.invalid/fleet/model:1.0", "--trust", tmp_path, "--ca-file", bad)
    assert "cannot load it as PEM certificates" in assert_error(out, code=2, kind="usage", subject=str(bad))
