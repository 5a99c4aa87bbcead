"""streams.adapters.media against hostile URIs and bytes: real files, real loopback servers, real decoders.

All network traffic stays on loopback: blocked addresses are refused before any connection, and
host names other than 'localhost' go through a stub resolver that answers 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import random
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from encoders_onnx.decoding import MediaError, load_image
from streams.adapters import media
from streams.adapters.media import MediaLimits, content_hash, fetch_bytes
from streams.settings import Settings

MYNTRA_IMAGES = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "myntra-fashion-small" / "images"
SECRET = b"outside the media root"


def limits(root: Path, **overrides) -> MediaLimits:
    values = dict(media_root=root, allow_private_networks=False, timeout_s=5.0, max_bytes=100_000)
    values.update(overrides)
    return MediaLimits(**values)


def fails(code: str, func: Callable, *args) -> MediaError:
    """Call func, expecting a MediaError with this code."""
    with pytest.raises(MediaError) as info:
        func(*args)
    assert info.value.code == code, str(info.value)
    return info.value


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(), mode)


JPEG = encode(noise(64, 48), "JPEG")


# --- the API's small pieces ----------------------------------------------------------------


def test_error_reads_well_in_a_dead_letter_reason():
    error = MediaError("too_large", "body longer than 10 bytes")
    assert error.code == "too_large"
    assert str(error) == "too_large: body longer than 10 bytes"


def test_content_hash_is_sha256_hex():
    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert content_hash(b"abc") != content_hash(b"abd")


@pytest.mark.parametrize("make", [Settings, SimpleNamespace])
def test_limits_from_settings(make, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = make(
        media_root="media",
        allow_private_networks=True,
        fetch_timeout_s=1.5,
        max_image_bytes=10,
        max_video_bytes=20,
    )
    images, videos = MediaLimits.for_images(settings), MediaLimits.for_videos(settings)
    assert images == MediaLimits(tmp_path / "media", True, 1.5, 10)
    assert videos == MediaLimits(tmp_path / "media", True, 1.5, 20)


# --- local files ---------------------------------------------------------------------------


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A media root with a file, a subfolder, and neighbours outside it."""
    media_root = tmp_path / "root"
    (media_root / "sub").mkdir(parents=True)
    (media_root / "sub" / "a.jpg").write_bytes(JPEG)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(SECRET)
    return media_root


def test_local_digests_are_known_until_the_file_changes(root):
    digests, bounds, path = media.LocalDigests(), limits(root), "sub/a.jpg"
    assert digests.known(path, bounds) is None  # never read
    data, digest = digests.read(path, bounds)
    assert data == JPEG and digest == content_hash(JPEG) == digests.known(path, bounds)
    file = root / path
    before = file.stat()
    file.write_bytes(bytes(reversed(JPEG)))  # same size, new content
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))  # even with the old mtime back
    assert digests.known(path, bounds) is None  # the change time moved
    assert digests.read(path, bounds)[1] == content_hash(bytes(reversed(JPEG))) == digests.known(path, bounds)


def test_local_digests_know_only_the_file_read_and_stay_bounded(root):
    digests, bounds = media.LocalDigests(max_entries=1), limits(root)
    fails("outside_media_root", digests.read, "../secret.txt", bounds)
    fails("too_large", digests.read, "sub/a.jpg", limits(root, max_bytes=10))
    assert digests.known("../secret.txt", bounds) is None and digests.known("sub/a.jpg", bounds) is None
    digests.read("sub/a.jpg", bounds)
    assert digests.known("sub/a.jpg", limits(root, max_bytes=10)) is None  # over these limits: the read says so
    (root / "sub" / "a.jpg").unlink()
    assert digests.known("sub/a.jpg", bounds) is None
    fails("not_found", digests.read, "sub/a.jpg", bounds)
    (root / "sub" / "a.jpg").symlink_to(root.parent / "secret.txt")  # swapped for an escape after a read
    assert digests.known("sub/a.jpg", bounds) is None  # another file's identity: never its digest
    fails("outside_media_root", digests.read, "sub/a.jpg", bounds)
    (root / "b.jpg").write_bytes(JPEG)
    (root / "c.jpg").write_bytes(JPEG)
    digests.read("b.jpg", bounds)
    digests.read("c.jpg", bounds)
    assert digests.known("b.jpg", bounds) is None and digests.known("c.jpg", bounds) == content_hash(JPEG)


def test_local_paths_inside_the_root(root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the root, not the cwd
    (root / "inside-link.jpg").symlink_to(root / "sub" / "a.jpg")
    for uri in [
        "sub/a.jpg",
        "./sub/../sub/a.jpg",
        str(root / "sub" / "a.jpg"),
        (root / "sub" / "a.jpg").as_uri(),
        "file://localhost" + str(root / "sub" / "a.jpg"),
        "inside-link.jpg",
    ]:
        assert fetch_bytes(uri, limits(root)) == JPEG, uri


@pytest.mark.parametrize(
    "uri",
    [
        "../secret.txt",
        "sub/../../secret.txt",
        "{tmp}/secret.txt",
        "file://{tmp}/secret.txt",
        "file://{tmp}/root/%2e%2e/secret.txt",
        "/etc/passwd",
        "/no/such/file",  # refused as outside before existence is checked: no probing oracle
        "link-out",
        "dir-link-out/secret.txt",
        "zero",
    ],
)
def test_escapes_from_the_root_are_refused(root, tmp_path, uri):
    (root / "link-out").symlink_to(tmp_path / "secret.txt")
    (root / "dir-link-out").symlink_to(tmp_path / "outside")
    (root / "zero").symlink_to("/dev/zero")
    fails("outside_media_root", fetch_bytes, uri.format(tmp=tmp_path), limits(root))


@pytest.mark.parametrize("uri", ["sub", "sub/", "", ".", "fifo"])
def test_non_regular_files_are_refused(root, uri):
    os.mkfifo(root / "fifo")  # opening it for reading would block forever
    fails("not_a_file", fetch_bytes, uri, limits(root))


def test_missing_file(root):
    fails("not_found", fetch_bytes, "sub/missing.jpg", limits(root))
    fails("not_found", fetch_bytes, "sub/a.jpg/x", limits(root))


def test_file_size_cap(root):
    assert fetch_bytes("sub/a.jpg", limits(root, max_bytes=len(JPEG))) == JPEG
    fails("too_large", fetch_bytes, "sub/a.jpg", limits(root, max_bytes=len(JPEG) - 1))


def test_a_symlink_swapped_in_after_the_check_is_not_followed(root):
    """The containment check resolves symlinks; the open must still refuse one it meets."""
    (root / "dir-link-out").symlink_to(root.parent / "outside")
    with pytest.raises(OSError):
        media._open_beneath(str(root), ["dir-link-out", "secret.txt"])
    (root / "file-link-out").symlink_to(root.parent / "secret.txt")
    fails("not_a_file", media._open_beneath, str(root), ["file-link-out"])


@pytest.mark.parametrize(
    "uri, code",
    [
        ("file://evil.example/etc/passwd", "bad_url"),
        ("ftp://127.0.0.1/a.jpg", "bad_scheme"),
        ("gopher://127.0.0.1:70/_", "bad_scheme"),
        ("data:image/png;base64,iVBORw0KGgo=", "bad_scheme"),
        ("http://user:pw@127.0.0.1/a.jpg", "bad_url"),
        ("http://user@127.0.0.1/a.jpg", "bad_url"),
        ("http:///a.jpg", "bad_url"),
        ("http://127.0.0.1:99999/a.jpg", "bad_url"),
        ("http://127.0.0.1/a b.jpg", "bad_url"),
    ],
)
def test_malformed_or_foreign_uris(root, uri, code):
    fails(code, fetch_bytes, uri, limits(root, allow_private_networks=True))


# --- address vetting (no connection is ever made to these) --------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "224.0.0.1",  # multicast: ipaddress calls it global
        "240.0.0.1",
        "2130706433",  # 127.0.0.1 in decimal
        "0x7f.1",
        "[::1]",
        "[::]",
        "[fe80::1]",
        "[fc00::1]",
        "[ff02::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:169.254.169.254]",
        "[2002:7f00:1::]",  # 6to4 around 127.0.0.1
        "[64:ff9b::a9fe:a9fe]",  # NAT64 around 169.254.169.254
    ],
)
def test_non_public_addresses_are_refused(root, host):
    fails("blocked_address", fetch_bytes, f"http://{host}:9/a.jpg", limits(root))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::", "64:ff9b::808:808"]
)
def test_public_addresses_pass_the_policy(address):
    assert media.is_public_address(ipaddress.ip_address(address))


# --- a real loopback server ----------------------------------------------------------------

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Loopback:
    """A threaded http(s) server on 127.0.0.1 that plays the routes it is given."""

    port: int
    scheme: str
    routes: dict[str, Route] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)  # the Host header of every request
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        loopback: Loopback = self.server.loopback  # type: ignore[attr-defined]
        loopback.hosts.append(self.headers.get("Host", ""))
        route = loopback.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def raw(head: bytes, trickle: bytes = b"") -> Route:
    """Send ``head`` verbatim, then ``trickle`` every 50 ms until the server stops."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(head)
        while trickle and not handler.server.loopback.stop.wait(0.05):  # type: ignore[attr-defined]
            handler.wfile.write(trickle)

    return route


def ok(body: bytes) -> Route:
    return raw(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def redirect(location: str) -> Route:
    return raw(b"HTTP/1.0 302 Found\r\nLocation: %s\r\n\r\n" % location.encode())


@pytest.fixture()
def serve() -> Iterator[Callable[..., Loopback]]:
    """Start loopback servers (optionally TLS) for one test; stop them all after."""
    started: list[tuple[_Server, Loopback, threading.Thread]] = []

    def start(tls: ssl.SSLContext | None = None) -> Loopback:
        server = _Server(("127.0.0.1", 0), _Handler)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        server.loopback = Loopback(server.server_address[1], "https" if tls else "http")  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, server.loopback, thread))  # type: ignore[attr-defined]
        return server.loopback  # type: ignore[attr-defined]

    yield start
    for server, loopback, thread in started:
        loopback.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture()
def resolver(monkeypatch) -> list[str]:
    """Every *.test host resolves to 127.0.0.1 without touching DNS; returns the lookups made."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        lookups.append(host)
        return real("127.0.0.1" if str(host).endswith(".test") else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def private_ok(root: Path, **overrides) -> MediaLimits:
    return limits(root, allow_private_networks=True, **overrides)


def test_loopback_image_when_private_networks_are_allowed(root, serve):
    server = serve()
    server.routes["/a.jpg"] = ok(JPEG)
    assert fetch_bytes(server.url("/a.jpg"), private_ok(root)) == JPEG
    fails("blocked_address", fetch_bytes, server.url("/a.jpg"), limits(root))
    assert len(server.hosts) == 1  # the refused fetch never connected


def test_host_is_resolved_once_and_sent_as_host_header(root, serve, resolver):
    """The connection goes to the vetted address: a second lookup could be rebound."""
    server = serve()
    server.routes["/a.jpg"] = ok(JPEG)
    assert fetch_bytes(server.url("/a.jpg", host="shop.test"), private_ok(root)) == JPEG
    assert resolver == ["shop.test"]
    assert server.hosts == [f"shop.test:{server.port}"]


def test_redirects_are_followed_up_to_three(root, serve):
    server = serve()
    server.routes["/r0"] = ok(JPEG)
    for hop in range(1, 5):
        server.routes[f"/r{hop}"] = redirect(f"/r{hop - 1}")
    assert fetch_bytes(server.url("/r3"), private_ok(root)) == JPEG
    fails("too_many_redirects", fetch_bytes, server.url("/r4"), private_ok(root))


@pytest.mark.parametrize(
    "path, sent",
    [
        ("/imgé.jpg", "/img%C3%A9.jpg"),
        ("/photos/übersicht.jpg?größe=groß&id=7", "/photos/%C3%BCbersicht.jpg?gr%C3%B6%C3%9Fe=gro%C3%9F&id=7"),
        ("/%E2%82%AC/€.jpg", "/%E2%82%AC/%E2%82%AC.jpg"),  # existing escapes are kept as they are
    ],
)
def test_non_ascii_urls_are_percent_encoded(root, serve, path, sent):
    server = serve()
    server.routes[sent] = ok(JPEG)
    assert fetch_bytes(server.url(path), private_ok(root)) == JPEG


def test_a_utf8_redirect_location_is_followed(root, serve):
    server = serve()
    server.routes["/go"] = raw(b"HTTP/1.0 302 Found\r\nLocation: /imag\xc3\xa9.jpg\r\n\r\n")
    server.routes["/imag%C3%A9.jpg"] = ok(JPEG)
    assert fetch_bytes(server.url("/go"), private_ok(root)) == JPEG


@pytest.mark.parametrize("uri", ["http://127.0.0.1:1/a\ud800.jpg", "/a\ud800.jpg", "file:///a\udfff.jpg"])
def test_a_lone_surrogate_is_a_bad_url(root, uri):
    fails("bad_url", fetch_bytes, uri, private_ok(root))


@pytest.mark.parametrize("per_host, fast_ones_arrive", [(1, True), (4, False)], ids=["limited", "control-unlimited"])
def test_a_slow_host_cannot_take_every_thread(root, serve, per_host, fast_ones_arrive):
    """Two threads; the slow host's four URLs come first. Limited to one download per host, the
    other host's images all arrive; without the limit both threads wait on the slow host until
    the batch deadline and nothing arrives (the control shows the test can fail)."""
    slow, fast = serve(), serve()
    trickling = raw(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n", trickle=b"x")
    slow.routes.update({f"/s.jpg?{i}": trickling for i in range(4)})
    fast.routes["/f.jpg"] = ok(JPEG)
    lim = private_ok(root, timeout_s=60.0)
    requests = [(slow.url(f"/s.jpg?{i}"), lim) for i in range(4)] + [(fast.url("/f.jpg"), lim) for _ in range(4)]
    with ThreadPoolExecutor(2) as pool:
        results = media.BatchFetcher(pool, per_host).fetch_all(requests, deadline_s=1.5)
        slow.stop.set()  # ends the trickles, so the pool can shut down
    assert all(isinstance(r, MediaError) and r.code == "timeout" for r in results[:4]), results[:4]
    assert any("deadline" in r.message for r in results[:4])
    assert (results[4:] == [JPEG] * 4) is fast_ones_arrive


def test_batch_fetcher_keeps_order_and_errors(root, serve):
    server = serve()
    server.routes["/a.jpg"] = ok(JPEG)
    (root / "local.jpg").write_bytes(b"local")
    requests = [(server.url("/a.jpg"), private_ok(root)), ("local.jpg", private_ok(root)),
                (server.url("/missing.jpg"), private_ok(root)), ("ftp://x/y", private_ok(root))]
    with ThreadPoolExecutor(4) as pool:
        results = media.BatchFetcher(pool, per_host=1).fetch_all(requests, deadline_s=30)
    assert results[:2] == [JPEG, b"local"]
    assert [r.code for r in results[2:]] == ["http_error", "bad_scheme"]
    with pytest.raises(ValueError):
        media.BatchFetcher(pool, per_host=0)

@pytest.mark.parametrize(
    "location, code",
    [
        ("http://169.254.169.254/latest/meta-data/", "blocked_address"),
        ("http://[::1]:{port}/a.jpg", "blocked_address"),
        ("http://127.0.0.2:{port}/a.jpg", "blocked_address"),
        ("file:///etc/passwd", "bad_scheme"),
    ],
)
def test_redirect_targets_are_vetted_again(root, serve, monkeypatch, location, code):
    """Only this server's own address passes the policy here; the redirect must be re-checked."""
    server = serve()
    server.routes["/go"] = redirect(location.format(port=server.port))
    server.routes["/a.jpg"] = ok(JPEG)
    this_server = ipaddress.ip_address("127.0.0.1")
    policy = media.is_public_address
    monkeypatch.setattr(media, "is_public_address", lambda ip: ip == this_server or policy(ip))
    fails(code, fetch_bytes, server.url("/go"), limits(root))
    assert len(server.hosts) == 1


@pytest.mark.parametrize(
    "route, code",
    [
        (raw(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 1001), "too_large"),  # no Content-Length
        (raw(b"HTTP/1.0 200 OK\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001), "too_large"),
        # declared too big, then nothing: refused on the header, not after waiting for a body
        (raw(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", trickle=b"\0"), "too_large"),
        (raw(b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10), "truncated"),
        (raw(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"), "http_error"),
        (raw(b"HTTP/1.0 302 Found\r\nContent-Length: 0\r\n\r\n"), "http_error"),
        (raw(b"not http at all\r\n\r\n"), "connection_error"),
    ],
)
def test_bad_responses(root, serve, route, code):
    server = serve()
    server.routes["/x"] = route
    fails(code, fetch_bytes, server.url("/x"), private_ok(root, max_bytes=1000, timeout_s=3.0))


def test_body_of_exactly_max_bytes_is_accepted(root, serve):
    server = serve()
    server.routes["/x"] = raw(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 1000)
    assert fetch_bytes(server.url("/x"), private_ok(root, max_bytes=1000)) == b"x" * 1000


@pytest.mark.parametrize(
    "route",
    [
        raw(b"HTTP/1.0 200 OK\r\n\r\n", trickle=b"x"),  # body, one byte per 50 ms, forever
        raw(b"HTTP/1.0 200 OK\r\nX-Slow: ", trickle=b"a"),  # a header that never ends
    ],
    ids=["body", "headers"],
)
def test_trickling_server_hits_the_overall_deadline(root, serve, route):
    """Each recv() succeeds quickly, so only a wall-clock deadline can stop this."""
    server = serve()
    server.routes["/slow"] = route
    outcome: list[BaseException] = []

    def fetch() -> None:  # in a thread, so a broken deadline fails the test instead of hanging it
        try:
            fetch_bytes(server.url("/slow"), private_ok(root, timeout_s=0.5))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "still downloading 10x past the deadline"
    assert isinstance(outcome[0], MediaError) and outcome[0].code == "timeout", outcome


# --- https: certificate checked against the host name, SNI sent, connection to the vetted IP --


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=shop.test", "-addext", "subjectAltName=DNS:shop.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_verifies_the_name_and_sends_sni(root, serve, resolver, certificate, monkeypatch):
    cert, key = certificate
    server_names: list[str | None] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda sock, name, ctx: server_names.append(name)
    server = serve(tls)
    server.routes["/a.jpg"] = ok(JPEG)
    trusting = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda: trusting(cafile=str(cert)))

    assert fetch_bytes(server.url("/a.jpg", host="shop.test"), private_ok(root)) == JPEG
    assert server_names == ["shop.test"]
    assert server.hosts == [f"shop.test:{server.port}"]
    fails("tls_error", fetch_bytes, server.url("/a.jpg", host="other.test"), private_ok(root))


# --- images --------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb's calling card."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_myntra_jpeg_loads_as_rgb():
    paths = sorted(MYNTRA_IMAGES.glob("*.jpg"))[:1]
    if not paths:
        pytest.skip(f"no Myntra images under {MYNTRA_IMAGES}")
    data = fetch_bytes(paths[0].name, limits(MYNTRA_IMAGES))
    image = load_image(data, max_pixels=40_000_000)
    assert image.mode == "RGB"
    assert image.size == (60, 80)


@pytest.mark.parametrize(
    "image, fmt",
    [
        (noise(30, 20), "PNG"),
        (noise(30, 20, "RGBA"), "PNG"),
        (noise(30, 20, "L"), "WEBP"),
        (noise(30, 20).convert("P"), "GIF"),
        (noise(30, 20), "BMP"),
    ],
)
def test_allowed_formats_load_as_rgb(image, fmt):
    loaded = load_image(encode(image, fmt), max_pixels=600)
    assert (loaded.mode, loaded.size) == ("RGB", (30, 20))


@pytest.mark.parametrize(
    "data, code",
    [
        (JPEG[: len(JPEG) // 2], "truncated"),
        (encode(noise(64, 64), "PNG")[:2000], "truncated"),
        (random.Random(0).randbytes(4096), "not_an_image"),
        (b"", "not_an_image"),
        (encode(noise(8, 8), "PPM"), "not_an_image"),  # Pillow reads it; we do not expose that decoder
        (png_claiming(100_000, 100_000), "too_many_pixels"),  # beyond Pillow's own bomb limit
        (png_claiming(2_000, 2_000), "too_many_pixels"),  # within Pillow's limit, above ours
    ],
    ids=["truncated-jpeg", "truncated-png", "random", "empty", "ppm", "bomb-huge", "bomb-over-ours"],
)
def test_bad_images_are_refused(data, code):
    fails(code, load_image, data, 1_000_000)


def test_exif_orientation_is_applied():
    """A photo stored sideways with an EXIF orientation tag is decoded upright."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (80, 60), (200, 30, 30)).save(buffer, "JPEG", exif=exif)
    image = load_image(buffer.getvalue(), max_pixels=1_000_000)
    assert image.size == (60, 80) and image.mode == "RGB"


# --- property: any URI string gives bytes or a MediaError -------------------------------------

URI_CODES = {"bad_scheme", "bad_url", "not_found", "outside_media_root", "not_a_file", "unreadable", "blocked_address"}


@settings(deadline=None, derandomize=True, max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from(["", "file://", "file:///", "http://127.0.0.1/", "https://[::1]:8443/", "http://", "ftp://"]),
    rest=st.text(max_size=40),
)
def test_any_uri_gives_bytes_or_a_media_error(root, monkeypatch, prefix, rest):
    """Local paths and file URIs stay inside the root; every host "resolves" to loopback and is
    refused before any connection, so each URL is parsed, vetted and percent-encoded without
    touching the network."""
    loopback = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: loopback)
    try:
        data = fetch_bytes(prefix + rest, limits(root))
    except MediaError as exc:
        assert exc.code in URI_CODES, exc
    else:
        assert data == JPEG  # the only file in the root
