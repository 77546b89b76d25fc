"""A small client for the OCI distribution spec, over the standard library (docs/oci.md).

Why not oras-py, the ORAS project's SDK: it depends on ``requests`` (and so on urllib3, idna,
charset-normalizer and certifi, a lot of code to audit for a trusted base), follows proxies from the
environment unless told otherwise, and writes each blob whole to a file before anything checks it.
The installer needs the opposite: a blob streamed straight into the verifier, with the bytes counted
against the size the *signed* manifest declares (an endless blob stops one byte past it), its digest
checked as it arrives, bounded memory, keep-alive connections shared by the parallel transfers, and
no proxy unless asked (``--use-proxy-env``). The part of the spec a bundle needs is small (a manifest
GET and PUT, blob HEAD, GET and a monolithic upload, the Basic and Bearer challenges), so it is
written here, in about four hundred lines that an auditor can read.

What the registry may do and what happens (the registry is not trusted: docs/oci.md, "What is checked"):
5xx, 429 and connection resets are retried with exponential backoff; a redirect is followed only to
the same scheme, host and port; other bytes for a digest, a blob longer or shorter than declared, or
a drip slower than :data:`STALL_BYTES` per ``stall_seconds`` are refused, naming the blob.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import io
import os
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GapshipError, HostError, IntegrityError, UsageError
from .auth import ANONYMOUS, Credentials, parse_challenge
from .reference import Reference

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the distribution spec's own limit for a manifest
MAX_TOKEN_BYTES = 64 * 1024
MAX_ERROR_BYTES = 16 * 1024
# A blob must bring at least this many bytes in each stall window, or it is a slow drip (a registry
# holding the installer's connections forever), refused like a truncated blob.
STALL_BYTES = 64 * 1024
# Reads of 1 MiB: a TLS connection returns at most a 16 KiB record per recv, so the loop below calls
# readinto many times per buffer, but the hashing and the writes then see large buffers (and release
# the GIL); measured in docs/oci.md ("Throughput").
READ_SIZE = 1024 * 1024
SEND_SIZE = 1024 * 1024  # http.client's blocksize for request bodies (its default, 8 KiB, costs a syscall each)
_RETRY_STATUS = {429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class ClientOptions:
    """How to reach a registry. ``plain_http`` is refused for anything but a loopback address."""

    plain_http: bool = False
    ca_file: Path | None = None
    use_proxy_env: bool = False
    credentials: Credentials = ANONYMOUS
    timeout: float = 30.0  # per connect and per read
    retries: int = 4
    backoff: float = 0.25  # first retry after this, doubling
    stall_seconds: float = 30.0


class BlobSink:
    """Where a blob's bytes go as they arrive; :meth:`reset` starts over (a retried transfer)."""

    def reset(self) -> None:
        return None

    def write(self, data: memoryview) -> None:
        return None


class FdSink(BlobSink):
    """Into a file descriptor, from offset 0."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)
        self.pos = 0

    def write(self, data: memoryview) -> None:
        while data:
            n = os.pwrite(self.fd, data, self.pos)
            self.pos += n
            data = data[n:]


class _RangeSink(BlobSink):
    """Keeps only bytes [offset, offset + length) of a blob streamed through it."""

    def __init__(self, offset: int, length: int) -> None:
        self.offset, self.length = offset, length
        self.pos = 0
        self.data = bytearray()

    def reset(self) -> None:
        self.pos = 0
        self.data.clear()

    def write(self, data: memoryview) -> None:
        lo, hi = max(self.offset - self.pos, 0), min(self.offset + self.length - self.pos, len(data))
        if lo < hi:
            self.data += data[lo:hi]
        self.pos += len(data)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes = b""


class _Retry(Exception):
    """A transient failure: try again after a backoff. When the retries are spent it is reported as
    :class:`IntegrityError` if the bytes were wrong (a truncated blob), else :class:`HostError`."""

    def __init__(self, message: str, *, integrity: bool = False) -> None:
        super().__init__(message)
        self.integrity = integrity


@dataclass
class _Auth:
    header: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class RegistryClient:
    """One registry (``ref.host``), shared by the threads of a transfer: each thread keeps its own
    keep-alive connection; the authorization is shared."""

    def __init__(self, ref: Reference, options: ClientOptions) -> None:
        if options.plain_http and not ref.is_loopback():
            raise UsageError(f"--plain-http is only allowed for a loopback address, not {ref.host!r}: "
                             "use TLS (--ca-file for the enclave's CA)", subject=ref.host)
        self.ref = ref
        self.options = options
        self.scheme = "http" if options.plain_http else "https"
        self.port = ref.port or (80 if options.plain_http else 443)
        self._ssl = None if options.plain_http else _ssl_context(options.ca_file)
        self._local = threading.local()
        self._auth = _Auth()
        self.proxy = _proxy_for(self.scheme, ref.hostname) if options.use_proxy_env else None

    # -- the API a transfer uses ------------------------------------------------------------------

    def get_manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest's bytes and their digest (computed here; a digest reference must match)."""
        r = self.request("GET", self._path("manifests", reference), headers={"Accept": MANIFEST_TYPE},
                         cap=MAX_MANIFEST_BYTES, what=f"manifest {reference}")
        digest = "sha256:" + hashlib.sha256(r.body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise IntegrityError(f"registry {self.ref.host} sent another manifest for {reference} (its bytes "
                                 f"hash to {digest})", subject=reference)
        return r.body, digest

    def put_manifest(self, reference: str, data: bytes, media_type: str = MANIFEST_TYPE) -> None:
        self.request("PUT", self._path("manifests", reference), headers={"Content-Type": media_type},
                     body=data, expect=(200, 201), what=f"manifest {reference}")

    def has_blob(self, digest: str) -> bool:
        r = self.request("HEAD", self._path("blobs", digest), expect=(200, 404), what=f"blob {digest}")
        return r.status == 200

    def upload_blob(self, digest: str, size: int, opener: Callable[[], int], *, what: str) -> None:
        """Upload ``size`` bytes read from the fd ``opener()`` returns, as ``digest`` (one monolithic
        PUT after a POST; the registry checks the digest and refuses other bytes)."""
        for attempt in self._attempts(what):
            with attempt:
                r = self.request("POST", self._path("blobs", "uploads") + "/", expect=(202,), what=what, retry=False)
                location = self._same_origin(r.headers.get("Location", ""), what=what)
                sep = "&" if "?" in location else "?"
                fd = opener()
                try:
                    with os.fdopen(os.dup(fd), "rb", buffering=0) as body:
                        self.request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}",
                                     headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                                     body=body, expect=(201,), what=what, retry=False)
                finally:
                    os.close(fd)

    def get_blob(self, digest: str, sink: BlobSink, *, size: int, what: str, check_digest: bool = True) -> None:
        """Stream blob ``digest`` into ``sink``: exactly ``size`` bytes (the signed size), whose sha256
        must be ``digest`` (unless ``check_digest`` is False: the caller checks the signed hash itself,
        as the install pipeline does). Refused with exit 3 naming ``what``."""
        for attempt in self._attempts(what):
            with attempt:
                sink.reset()
                self._get_blob_once(digest, sink, size=size, what=what, check_digest=check_digest)

    def get_range(self, digest: str, offset: int, length: int, *, size: int, what: str) -> bytes:
        """Bytes ``[offset, offset + length)`` of blob ``digest`` (``size`` bytes long), by an HTTP
        Range request; a registry that answers with the whole blob is read through, keeping only the
        range. Not checked against the digest: the caller checks the bytes against a signed hash."""
        if length <= 0:
            return b""
        for attempt in self._attempts(what):
            with attempt:
                resp = self._send("GET", self._path("blobs", digest), body=None, what=what,
                                  headers={"Range": f"bytes={offset}-{offset + length - 1}"})
                if resp.status == 206:
                    data = self._read_small(resp, cap=length, what=what)
                    if len(data) != length:
                        raise _Retry(f"{what} is truncated: {len(data)} of {length} bytes asked for", integrity=True)
                    return data
                if resp.status != 200:
                    self._check_status(resp, self._read_small(resp, cap=MAX_ERROR_BYTES, what=what), (200,), what=what)
                sink = _RangeSink(offset, length)
                seen = self._stream(resp, sink, None, size=size, what=what)
                if seen != size:
                    self._drop()
                    raise _Retry(f"{what} is truncated: {seen} of {size} bytes", integrity=True) if seen < size else \
                        IntegrityError(f"{what} is longer than the {size} bytes the manifest declares", subject=what)
                return bytes(sink.data)
        raise AssertionError("unreachable")

    # -- requests ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | object | None = None, expect: tuple[int, ...] = (200,), cap: int = MAX_ERROR_BYTES,
                what: str, retry: bool = True) -> Response:
        """One request with auth, same-origin redirects and (``retry``) retries; the body read whole,
        up to ``cap``."""
        if not retry:  # the caller retries the whole exchange (an upload: POST then PUT)
            return self._request_once(method, path, headers=headers, body=body, expect=expect, cap=cap, what=what)
        for attempt in self._attempts(what):
            with attempt:
                return self._request_once(method, path, headers=headers, body=body, expect=expect, cap=cap, what=what)
        raise AssertionError("unreachable")

    def _request_once(self, method: str, path: str, *, headers: Mapping[str, str] | None, body: object,
                      expect: tuple[int, ...], cap: int, what: str) -> Response:
        resp = self._send(method, path, headers=headers, body=body, what=what)
        data = self._read_small(resp, cap=cap, what=what)
        self._check_status(resp, data, expect, what=what)
        return Response(resp.status, resp.headers, data)

    def _send(self, method: str, path: str, *, headers: Mapping[str, str] | None, body: object,
              what: str) -> http.client.HTTPResponse:
        """Send, answering an auth challenge once and following same-origin redirects."""
        authed = False
        for _ in range(6):
            resp = self._raw(method, path, headers=headers, body=body)
            if resp.status == 401 and not authed:
                challenge = resp.headers.get("WWW-Authenticate", "")
                self._discard(resp)
                self._authenticate(challenge, what=what)
                authed = True
                if hasattr(body, "seek"):
                    body.seek(0)
                continue
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location", "")
                self._discard(resp)
                path = self._same_origin(location, what=what)
                if resp.status == 303:
                    method, body = "GET", None
                continue
            return resp
        raise HostError(f"registry {self.ref.host}: too many redirects for {what}", subject=what)

    def _raw(self, method: str, path: str, *, headers: Mapping[str, str] | None,
             body: object) -> http.client.HTTPResponse:
        conn = self._connection()
        h = {"User-Agent": "gapship", **(headers or {})}
        if self._auth.header:
            h["Authorization"] = self._auth.header
        if body is None and method in ("PUT", "POST"):
            h.setdefault("Content-Length", "0")
        try:
            conn.request(method, path, body=body, headers=h)  # type: ignore[arg-type]
            resp = conn.getresponse()
            self._local.resp = resp  # closed with the connection: its file keeps the socket open
            return resp
        except BaseException:
            self._drop()
            raise

    def _check_status(self, resp: http.client.HTTPResponse, data: bytes, expect: tuple[int, ...], *,
                      what: str) -> None:
        if resp.status in expect:
            return
        if resp.status in _RETRY_STATUS:
            raise _Retry(f"registry {self.ref.host} answered {resp.status} {resp.reason} for {what}")
        if resp.status in (401, 403):
            raise HostError(f"registry {self.ref.host} refused the credentials for {what} ({resp.status} "
                            f"{resp.reason})", subject=self.ref.host,
                            hint="check the auths entry for this host in the registry config (--registry-config, "
                                 "or ~/.docker/config.json)")
        if resp.status == 404:
            raise IntegrityError(f"registry {self.ref.host} has no {what} in {self.ref.repository}", subject=what)
        raise HostError(f"registry {self.ref.host} answered {resp.status} {resp.reason} for {what}: "
                        f"{_error_text(data)}", subject=what)

    def _read_small(self, resp: http.client.HTTPResponse, *, cap: int, what: str) -> bytes:
        try:
            data = resp.read(cap + 1)
        except (http.client.IncompleteRead, OSError, http.client.HTTPException) as e:
            self._drop()
            raise _Retry(f"registry {self.ref.host}: connection lost while reading {what}: {e}") from None
        if len(data) > cap:
            self._drop()
            raise IntegrityError(f"registry {self.ref.host}: {what} is larger than the {cap}-byte cap",
                                 subject=what)
        if resp.will_close:
            self._drop()
        return data

    def _discard(self, resp: http.client.HTTPResponse) -> None:
        try:
            resp.read(MAX_ERROR_BYTES)
        except (OSError, http.client.HTTPException):
            pass
        if not resp.isclosed() or resp.will_close:
            self._drop()

    # -- blobs ------------------------------------------------------------------------------------

    def _get_blob_once(self, digest: str, sink: BlobSink, *, size: int, what: str, check_digest: bool) -> None:
        resp = self._send("GET", self._path("blobs", digest), headers=None, body=None, what=what)
        if resp.status != 200:
            data = self._read_small(resp, cap=MAX_ERROR_BYTES, what=what)
            self._check_status(resp, data, (200,), what=what)
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > size:
            self._drop()
            raise IntegrityError(f"{what}: registry {self.ref.host} offers {declared} bytes for blob {digest}, "
                                 f"more than the {size} the manifest declares", subject=what)
        hasher = hashlib.sha256() if check_digest else None
        seen = self._stream(resp, sink, hasher, size=size, what=what)
        if seen > size:
            self._drop()
            raise IntegrityError(f"{what} is longer than the {size} bytes the manifest declares (registry "
                                 f"{self.ref.host}, blob {digest})", subject=what)
        if seen < size:
            self._drop()
            raise _Retry(f"{what} is truncated: {seen} of {size} bytes (registry {self.ref.host}, blob {digest})",
                         integrity=True)
        if resp.will_close or not resp.isclosed():
            self._drop()
        if hasher is not None and "sha256:" + hasher.hexdigest() != digest:
            raise IntegrityError(f"{what} does not match its digest: registry {self.ref.host} sent other bytes "
                                 f"for blob {digest}", subject=what)

    def _stream(self, resp: http.client.HTTPResponse, sink: BlobSink, hasher: hashlib._Hash | None, *,
                size: int, what: str) -> int:
        """Read at most ``size + 1`` bytes into ``sink``; return how many came."""
        buf = bytearray(min(READ_SIZE, size + 1) or 1)
        view = memoryview(buf)
        seen, mark, since = 0, 0, time.monotonic()
        while seen <= size:
            filled = 0
            want = min(len(buf), size + 1 - seen)
            while filled < want:
                try:
                    n = resp.readinto(view[filled:want])
                except (OSError, http.client.HTTPException) as e:
                    self._drop()
                    raise _Retry(f"{what}: connection lost after {seen + filled} of {size} bytes "
                                 f"(registry {self.ref.host}): {e}") from None
                if not n:
                    break
                filled += n
                now = time.monotonic()
                if seen + filled - mark >= STALL_BYTES:
                    mark, since = seen + filled, now
                elif now - since > self.options.stall_seconds:
                    self._drop()
                    raise IntegrityError(f"{what} is arriving too slowly: {seen + filled} of {size} bytes, less "
                                         f"than {STALL_BYTES} bytes in {self.options.stall_seconds:g}s (registry "
                                         f"{self.ref.host})", subject=what)
            if not filled:
                break
            take = min(filled, size - seen)
            if hasher is not None:
                hasher.update(view[:take])
            sink.write(view[:take])
            seen += filled
        return seen

    # -- retries, auth, connections ----------------------------------------------------------------

    def _attempts(self, what: str) -> _Attempts:
        return _Attempts(self, what, self.options.retries)

    def _authenticate(self, header: str, *, what: str) -> None:
        challenge = parse_challenge(header)
        creds = self.options.credentials
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise HostError(f"registry {self.ref.host} asks for an authentication gapship does not speak "
                            f"({header[:60]!r}) for {what}", subject=self.ref.host)
        if challenge.scheme == "basic":
            basic = creds.basic()
            if basic is None:
                raise HostError(f"registry {self.ref.host} needs credentials for {what}", subject=self.ref.host,
                                hint="add an auths entry for this host to ~/.docker/config.json or --registry-config")
            self._auth.header = basic
            return
        with self._auth.lock:
            self._auth.header = "Bearer " + self._token(challenge.params, what=what)

    def _token(self, params: dict[str, str], *, what: str) -> str:
        """The bearer token flow (distribution's token spec): GET realm?service=&scope= with Basic."""
        from ..kit import parse_json

        realm = params.get("realm", "")
        url = urllib.parse.urlsplit(realm)
        if url.scheme != "https" and not (url.scheme == "http" and self.options.plain_http):
            raise HostError(f"registry {self.ref.host}: token realm {realm!r} is not https", subject=self.ref.host)
        query = urllib.parse.urlencode([(k, params[k]) for k in ("service", "scope") if k in params])
        conn = _connect(url.scheme, url.hostname or "", url.port or (443 if url.scheme == "https" else 80),
                        self._ssl, self.options.timeout, None)
        headers = {"User-Agent": "gapship"}
        basic = self.options.credentials.basic()
        if basic:
            headers["Authorization"] = basic
        try:
            conn.request("GET", f"{url.path or '/'}?{query}", headers=headers)
            resp = conn.getresponse()
            data = resp.read(MAX_TOKEN_BYTES + 1)
        except (OSError, http.client.HTTPException) as e:
            raise HostError(f"registry {self.ref.host}: token service {url.hostname} unreachable: {e}",
                            subject=self.ref.host) from None
        finally:
            conn.close()
        if resp.status in (401, 403):
            raise HostError(f"registry {self.ref.host}: the token service refused the credentials for {what}",
                            subject=self.ref.host,
                            hint="check the auths entry for this host in the registry config")
        if resp.status != 200 or len(data) > MAX_TOKEN_BYTES:
            raise HostError(f"registry {self.ref.host}: token service answered {resp.status}", subject=self.ref.host)
        doc = parse_json(data, source="token response", error=HostError)
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise HostError(f"registry {self.ref.host}: the token response has no token", subject=self.ref.host)
        return token

    def _same_origin(self, location: str, *, what: str) -> str:
        """The path of ``location`` (absolute or relative), refused unless it stays on this registry."""
        url = urllib.parse.urlsplit(location)
        if url.scheme or url.netloc:
            port = url.port or (443 if url.scheme == "https" else 80)
            if url.scheme != self.scheme or (url.hostname or "").lower() != self.ref.hostname.lower() \
                    or port != self.port:
                raise HostError(f"registry {self.ref.host} redirects {what} to another host or scheme "
                                f"({url.scheme}://{url.netloc}): refused", subject=what,
                                hint="gapship follows redirects only to the same registry; turn off storage "
                                     "redirects in the registry's configuration")
        if not url.path.startswith("/"):
            raise HostError(f"registry {self.ref.host} sent a bad location {location[:80]!r} for {what}", subject=what)
        return url.path + (f"?{url.query}" if url.query else "")

    def _path(self, kind: str, reference: str) -> str:
        return f"/v2/{self.ref.repository}/{kind}/{reference}"

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.scheme, self.ref.hostname, self.port, self._ssl, self.options.timeout, self.proxy)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        resp: http.client.HTTPResponse | None = getattr(self._local, "resp", None)
        if resp is not None:
            resp.close()
            self._local.resp = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        self._drop()

    def describe_os_error(self, e: BaseException, what: str) -> GapshipError:
        if isinstance(e, ssl.SSLCertVerificationError):
            return HostError(f"registry {self.ref.host}: TLS certificate not trusted ({e.verify_message})",
                             subject=self.ref.host, hint="pass the enclave's CA with --ca-file")
        if isinstance(e, ssl.SSLError):
            return HostError(f"registry {self.ref.host}: TLS failed: {e.reason or e}", subject=self.ref.host)
        if isinstance(e, (ConnectionRefusedError, socket.gaierror)) or getattr(e, "errno", None) in (
                errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
            return HostError(f"registry {self.ref.host} is unreachable: {getattr(e, 'strerror', None) or e}",
                             subject=self.ref.host)
        if isinstance(e, (TimeoutError, socket.timeout)):
            return HostError(f"registry {self.ref.host} did not answer within {self.options.timeout:g}s ({what})",
                             subject=self.ref.host)
        return HostError(f"registry {self.ref.host}: {what}: {e}", subject=self.ref.host)


class _Attempts:
    """``for attempt in client._attempts(what): with attempt: ...``: retries transient failures with
    exponential backoff; the last one (or a permanent one) raises as a :class:`GapshipError`."""

    def __init__(self, client: RegistryClient, what: str, retries: int) -> None:
        self.client, self.what, self.left = client, what, retries
        self.done = False
        self.delay = client.options.backoff

    def __iter__(self) -> _Attempts:
        return self

    def __next__(self) -> _Attempts:
        if self.done:
            raise StopIteration
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: object) -> bool:
        if e is None:
            self.done = True
            return False
        if isinstance(e, GapshipError):
            return False
        transient = isinstance(e, _Retry) or (isinstance(e, (ConnectionResetError, BrokenPipeError,
                                                             http.client.RemoteDisconnected,
                                                             http.client.IncompleteRead, ConnectionAbortedError))
                                              and not isinstance(e, ssl.SSLCertVerificationError))
        if not transient or self.left <= 0:
            if isinstance(e, _Retry):
                raise (IntegrityError if e.integrity else HostError)(str(e), subject=self.what) from None
            if isinstance(e, (OSError, http.client.HTTPException)):
                raise self.client.describe_os_error(e, self.what) from None
            return False
        self.client._drop()
        time.sleep(self.delay)
        self.delay *= 2
        self.left -= 1
        return True


MAX_CA_FILE_BYTES = 8 * 1024 * 1024  # a PEM bundle of every public CA is about 200 KiB


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's CAs, or with ``--ca-file`` only that file's (the enclave's own CA). The file is read
    by the kit's bounded reader (a FIFO is refused, not waited on; symlinks are followed, as CA
    bundles often are), then handed to ssl as data."""
    from ..kit import Refusal, read_bounded

    def refuse(r: Refusal) -> Exception:
        return UsageError(f"--ca-file {str(ca_file)!r}: {r.strerror or r.reason}", subject=str(ca_file))

    try:
        pem = read_bounded(ca_file, cap=MAX_CA_FILE_BYTES, refuse=refuse, follow_symlinks=True) if ca_file else None
        context = ssl.create_default_context(cadata=pem.decode("ascii") if pem is not None else None)
    except (OSError, ssl.SSLError, UnicodeDecodeError) as e:
        raise UsageError(f"--ca-file {str(ca_file)!r}: cannot load it as PEM certificates: {e}",
                         subject=str(ca_file)) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _connect(scheme: str, host: str, port: int, context: ssl.SSLContext | None, timeout: float,
             proxy: tuple[str, int] | None) -> http.client.HTTPConnection:
    target = (proxy[0], proxy[1]) if proxy else (host, port)
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = _HTTPSConnection(*target, timeout=timeout, context=context, blocksize=SEND_SIZE)
    else:
        conn = http.client.HTTPConnection(*target, timeout=timeout, blocksize=SEND_SIZE)
    if proxy:
        conn.set_tunnel(host, port)
    return conn


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """The proxy the environment names for ``scheme`` (``--use-proxy-env`` only), honouring no_proxy."""
    if urllib.request.proxy_bypass_environment(host):  # type: ignore[attr-defined]  # public, untyped in typeshed
        return None
    proxy = urllib.request.getproxies_environment().get(scheme)
    if not proxy:
        return None
    url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return (url.hostname or "", url.port or 3128)


def _error_text(data: bytes) -> str:
    text = data[:200].decode("utf-8", "replace").strip()
    return text or "(no message)"


# -- TLS read in large pieces ------------------------------------------------------------------------

RECV_SIZE = 256 * 1024


class _HTTPSConnection(http.client.HTTPSConnection):
    """``HTTPSConnection`` whose TLS runs over memory BIOs (:class:`_TLSSocket`)."""

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP (and a proxy's CONNECT tunnel)
        hostname = self._tunnel_host or self.host  # type: ignore[attr-defined]
        self.sock = _TLSSocket(self.sock, self._context, hostname)  # type: ignore[attr-defined]


class _TLSSocket:
    """A TLS connection through :class:`ssl.SSLObject` and memory BIOs, for ``http.client``.

    Why: an ``ssl.SSLSocket`` lets OpenSSL read the socket, and it reads each TLS record (at most 16
    KiB) in two system calls, header then body: 131,890 reads for a 1 GiB blob on the benchmark. Here
    the socket is read in :data:`RECV_SIZE` pieces and OpenSSL decrypts from memory (docs/oci.md,
    "Throughput"). Certificate checks are the context's, as with ``wrap_socket``."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, hostname: str) -> None:
        self._sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname=hostname)
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionResetError("the registry closed the connection during the TLS handshake") from None
        self._flush()

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._sock.sendall(data)

    def _fill(self) -> bool:
        data = self._sock.recv(RECV_SIZE)
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0) -> int:
        view = memoryview(buffer)[: nbytes or len(buffer)]
        while True:
            try:
                return int(self._tls.read(len(view), view))  # an int when given a buffer
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    return 0
            except ssl.SSLZeroReturnError:
                return 0
            except ssl.SSLEOFError:
                return 0  # closed without close_notify: the caller sees a short body

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = self._tls.write(view)
            view = view[n:]
            self._flush()

    def makefile(self, mode: str, buffering: int | None = None) -> io.BufferedReader:
        return io.BufferedReader(_RawTLS(self))

    def setsockopt(self, *args: int) -> None:
        self._sock.setsockopt(*args)

    def settimeout(self, value: float | None) -> None:
        self._sock.settimeout(value)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


class _RawTLS(io.RawIOBase):
    def __init__(self, tls: _TLSSocket) -> None:
        self._tls = tls

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._tls.recv_into(buffer)
