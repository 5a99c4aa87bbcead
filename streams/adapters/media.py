"""Bounded, safe loading of seller media.

Media URIs come from untrusted sellers, so every path here assumes the URI is hostile:

* local paths and ``file://`` URIs must stay inside ``media_root`` (symlinks included) and name
  a regular file; the open itself refuses symlinks, so a swap after the check cannot escape;
* ``http(s)://`` hosts are resolved once, every address is vetted (no private, loopback,
  link-local, multicast or reserved targets unless allowed), and the connection goes to the
  vetted address, so DNS rebinding cannot redirect it; redirects are re-vetted hop by hop;
* every download is capped in bytes and in wall-clock time, headers included;
* ``BatchFetcher`` runs a batch's downloads with a per-host concurrency limit and one deadline
  for the batch, so a slow seller host delays only its own media;
* images are decoded by ``encoders_onnx.decoding``, refused on their header dimensions first.

Every failure is a :class:`MediaError` with a short machine-readable ``code``.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from collections import OrderedDict, defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence, TypeVar
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

from encoders_onnx.decoding import MediaError

MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_USER_AGENT = "shelfstream-media/1"
# NAT64 well-known prefix: the gateway turns these into the embedded IPv4 address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

T = TypeVar("T")


@dataclass(frozen=True)
class MediaLimits:
    """Where local media may live, whether private networks are reachable, and the caps."""

    media_root: Path  # resolved once here (symlinks followed): every local read is checked against it
    allow_private_networks: bool
    timeout_s: float
    max_bytes: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "media_root", Path(os.path.realpath(Path(self.media_root).expanduser())))

    @classmethod
    def for_images(cls, settings: Any) -> "MediaLimits":
        return cls._from(settings, settings.max_image_bytes)

    @classmethod
    def for_videos(cls, settings: Any) -> "MediaLimits":
        return cls._from(settings, settings.max_video_bytes)

    @classmethod
    def _from(cls, settings: Any, max_bytes: int) -> "MediaLimits":
        return cls(
            media_root=Path(settings.media_root),
            allow_private_networks=bool(settings.allow_private_networks),
            timeout_s=float(settings.fetch_timeout_s),
            max_bytes=int(max_bytes),
        )


def content_hash(data: bytes) -> str:
    """The sha256 hex digest of ``data``: the one cache key of a piece of media."""
    return hashlib.sha256(data).hexdigest()


def fetch_bytes(uri: str, limits: MediaLimits, until: float | None = None) -> bytes:
    """The bytes behind ``uri`` (local path, ``file://``, ``http://`` or ``https://``), bounded.

    A download ends after ``limits.timeout_s`` or at ``until`` (a ``time.monotonic()`` instant,
    e.g. a batch's media deadline), whichever comes first.
    """
    path = local_path(uri)
    if path is not None:
        with _open_local(path, limits) as (file, _):
            return _read_bounded(file, path, limits)
    return _fetch_http(uri, limits, _Deadline(limits.timeout_s, until))


def local_path(uri: str) -> str | None:
    """The path of a local path or ``file://`` URI; None for ``http(s)://``; MediaError for the rest."""
    try:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
    except ValueError as exc:
        raise MediaError("bad_url", f"cannot parse {uri!r}: {exc}") from exc
    if not scheme:
        return uri
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise MediaError("bad_url", f"file URI with a remote host: {uri!r}")
        return unquote(parts.path)
    if scheme in ("http", "https"):
        return None
    raise MediaError("bad_scheme", f"scheme {scheme!r} is not file, http or https")


class LocalDigests:
    """The sha256 of local media files read before, by file identity (device, inode, size, and
    modification and change times in ns: any write moves the change time, which no user can set
    back), so that an unchanged photo is stat-ed but not opened, read and hashed again, as a price
    update would otherwise do for every product. Bounded: the least recently used identities go
    first."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._known: OrderedDict[str, tuple[tuple[int, ...], str]] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, path: str, limits: MediaLimits) -> str | None:
        """The digest of ``path`` if it is the very file read here before, unchanged since; else
        None, and the caller reads it through the checked open, which reports what is wrong. A
        plain stat is enough (~5 us against ~50 us for the checked open): nothing is read here,
        and a matching identity is a file that a checked read already hashed, wherever the path
        leads now (a swapped-in symlink or a replaced file has another identity)."""
        where = os.path.join(str(limits.media_root), path)
        if where not in self._known:  # never read: no need to look twice
            return None
        try:
            info = os.stat(where)
        except (OSError, ValueError):
            return None
        return self._lookup(where, _identity(info)) if info.st_size <= limits.max_bytes else None

    def read(self, path: str, limits: MediaLimits) -> tuple[bytes, str]:
        """The file's bytes and their digest, remembered by the identity of the file read."""
        with _open_local(path, limits) as (file, info):
            data = _read_bounded(file, path, limits)
        digest = content_hash(data)
        where = os.path.join(str(limits.media_root), path)
        with self._lock:
            self._known[where] = (_identity(info), digest)
            self._known.move_to_end(where)
            while len(self._known) > self.max_entries:
                self._known.popitem(last=False)
        return data, digest

    def _lookup(self, path: str, identity: tuple[int, ...]) -> str | None:
        with self._lock:
            entry = self._known.get(path)
            if entry is None or entry[0] != identity:
                return None
            self._known.move_to_end(path)
            return entry[1]


def _identity(info: os.stat_result) -> tuple[int, ...]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class BatchFetcher:
    """Downloads a batch's media so that one slow seller host cannot stall the others.

    At most ``per_host`` downloads run at once per host (scheme, host and port; local files are
    not limited), so the pool's threads are shared among hosts instead of all waiting on one.
    Every download also ends at the batch's deadline: what is not fetched by then, started or
    still queued behind its host, is a ``MediaError("timeout")``, and ``fetch_all`` returns
    then. A download cut by the deadline stops within moments (its socket is shut down), so
    its thread is free for the next batch.
    """

    def __init__(self, pool: Executor, per_host: int) -> None:
        if per_host < 1:
            raise ValueError(f"per_host must be at least 1, not {per_host}")
        self.pool = pool
        self.per_host = per_host

    def fetch_all(self, requests: Sequence[tuple[str, MediaLimits]], deadline_s: float) -> list[bytes | MediaError]:
        """The bytes or the ``MediaError`` of each ``(uri, limits)``, in order, within ``deadline_s``."""
        until = time.monotonic() + deadline_s
        results: list[bytes | MediaError | None] = [None] * len(requests)
        queued: dict[str | None, deque[int]] = defaultdict(deque)
        for index, (uri, _) in enumerate(requests):
            queued[_host_key(uri)].append(index)
        running: dict[Future[bytes], tuple[str | None, int]] = {}

        def start(host: str | None) -> None:
            index = queued[host].popleft()
            uri, limits = requests[index]
            running[self.pool.submit(fetch_bytes, uri, limits, until)] = (host, index)

        for host, indexes in queued.items():
            for _ in range(len(indexes) if host is None else min(self.per_host, len(indexes))):
                start(host)
        while running:
            done, _ = wait(running, timeout=max(0.0, until - time.monotonic()), return_when=FIRST_COMPLETED)
            if not done:
                break
            for future in done:
                host, index = running.pop(future)
                error = future.exception()
                if error is not None and not isinstance(error, MediaError):
                    raise error
                results[index] = error if error is not None else future.result()
                if queued[host]:
                    start(host)
        late = MediaError("timeout", f"not fetched within the batch's media deadline of {deadline_s:g} s")
        return [late if result is None else result for result in results]


def _host_key(uri: str) -> str | None:
    """``scheme://host:port`` of an http(s) URI; None for local files and unparsable URIs."""
    try:
        parts = urlsplit(uri)
        if parts.scheme.lower() in ("http", "https"):
            return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{parts.port}"
    except ValueError:
        pass
    return None


# --- local files ---------------------------------------------------------------------------


@contextmanager
def _open_local(path: str, limits: MediaLimits) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """A regular file inside media_root, open, with its fstat; escapes are refused before the
    file's existence is revealed, and a file over ``limits.max_bytes`` before it is read."""
    root = str(limits.media_root)
    try:
        resolved = os.path.realpath(os.path.join(root, path))
    except ValueError as exc:  # e.g. an embedded NUL
        raise MediaError("bad_url", f"bad path {path!r}: {exc}") from exc
    if os.path.commonpath([root, resolved]) != root:
        raise MediaError("outside_media_root", f"{path!r} resolves outside the media root")
    relative = os.path.relpath(resolved, root)
    if relative == os.curdir:
        raise MediaError("not_a_file", f"{path!r} is the media root itself")
    try:
        fd = _open_beneath(root, relative.split(os.sep))
    except FileNotFoundError as exc:
        raise MediaError("not_found", f"no such file: {path!r}") from exc
    except NotADirectoryError as exc:
        raise MediaError("not_found", f"no such file: {path!r}") from exc
    except OSError as exc:
        raise MediaError("unreadable", f"cannot open {path!r}: {exc.strerror}") from exc
    with open(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise MediaError("not_a_file", f"{path!r} is not a regular file")
        if info.st_size > limits.max_bytes:
            raise MediaError("too_large", f"{path!r} has {info.st_size} bytes > {limits.max_bytes}")
        yield file, info


def _read_bounded(file: BinaryIO, path: str, limits: MediaLimits) -> bytes:
    try:
        data = file.read(limits.max_bytes + 1)  # the file may grow after fstat
    except OSError as exc:
        raise MediaError("unreadable", f"cannot read {path!r}: {exc.strerror}") from exc
    if len(data) > limits.max_bytes:
        raise MediaError("too_large", f"{path!r} has more than {limits.max_bytes} bytes")
    return data


def _open_beneath(root: str, names: list[str]) -> int:
    """Open root/names... one component at a time, never following a symlink.

    realpath() already resolved every symlink, so a symlink met here was swapped in after the
    containment check: O_NOFOLLOW makes that fail (ELOOP) instead of escaping the root. Non-regular
    files are refused before opening, and O_NONBLOCK keeps a fifo swapped in from blocking.
    """
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    dir_fd = os.open(root, dir_flags)
    try:
        for name in names[:-1]:
            next_fd = os.open(name, dir_flags | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        mode = os.stat(names[-1], dir_fd=dir_fd, follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            raise MediaError("not_a_file", f"{os.path.join(*names)!r} is not a regular file")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        return os.open(names[-1], flags, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


# --- http(s) -------------------------------------------------------------------------------


class _Deadline:
    """One wall-clock budget shared by DNS, connects, TLS, headers and body of every hop."""

    def __init__(self, seconds: float, until: float | None = None) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.cut_short = until is not None and until < self.at  # by the batch's deadline
        if self.cut_short:
            self.at = until

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.error()
        return left

    def error(self) -> MediaError:
        if self.cut_short:
            return MediaError("timeout", "download not finished at the batch's media deadline")
        return MediaError("timeout", f"download took longer than {self.seconds:g} s")


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is a globally routable unicast address, looking through v6 wrappings.

    IPv4-mapped, 6to4 and NAT64 addresses reach the embedded IPv4 address, so that one is judged.
    ``is_global`` alone is not enough: it is True for multicast and for some reserved ranges.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _fetch_http(uri: str, limits: MediaLimits, deadline: _Deadline) -> bytes:
    """GET ``uri``, following at most MAX_REDIRECTS redirects, each one vetted like the first."""
    for _ in range(MAX_REDIRECTS + 1):
        target = _parse_http_url(uri)
        location = _get_once(target, limits, deadline)
        if isinstance(location, bytes):
            return location
        uri = urljoin(uri, location)
    raise MediaError("too_many_redirects", f"more than {MAX_REDIRECTS} redirects")


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    path: str  # path and query, as sent on the request line


def _parse_http_url(uri: str) -> _Target:
    try:
        parts: SplitResult = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise MediaError("bad_url", f"cannot parse {uri!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise MediaError("bad_scheme", f"scheme {scheme!r} is not http or https")
    if parts.username is not None or parts.password is not None:
        raise MediaError("bad_url", "credentials in the URL are not allowed")
    if not parts.hostname:
        raise MediaError("bad_url", f"no host in {uri!r}")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise MediaError("bad_url", f"bad host name {parts.hostname!r}") from exc
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in path):
        raise MediaError("bad_url", "control characters or spaces in the URL path")
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), _ascii_request_target(path))


def _ascii_request_target(path: str) -> str:
    """Percent-encode what is not ASCII (as UTF-8, RFC 3986 section 3.1), as browsers do.

    Sellers paste URLs like ``/imgé.jpg`` that a browser shows and fetches; the request line must be
    ASCII. Everything ASCII, existing ``%XX`` escapes included, is sent as it is.
    """
    try:
        return "".join(c if c.isascii() else quote(c, safe="") for c in path)
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
        raise MediaError("bad_url", f"not encodable as UTF-8: {exc.reason}") from exc


def _resolve(target: _Target, limits: MediaLimits, deadline: _Deadline) -> list[tuple]:
    """Resolve the host once and vet every address: one bad answer refuses the host."""
    try:
        infos = _call_with_deadline(
            lambda: socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM),
            deadline,
        )
    except socket.gaierror as exc:
        raise MediaError("dns_error", f"cannot resolve {target.host!r}: {exc.strerror}") from exc
    if not infos:
        raise MediaError("dns_error", f"no address for {target.host!r}")
    if not limits.allow_private_networks:
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            if not is_public_address(ip):
                raise MediaError(
                    "blocked_address", f"{target.host!r} resolves to non-public address {ip}"
                )
    return infos


def _call_with_deadline(func: Callable[[], T], deadline: _Deadline) -> T:
    """Run a blocking call that has no timeout of its own (getaddrinfo) under the deadline.

    The worker thread is a daemon: if the call hangs past the deadline it is abandoned, and it
    ends by itself when the resolver gives up.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = func()
        except BaseException as exc:  # handed over to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="media-resolve", daemon=True)
    worker.start()
    worker.join(deadline.remaining())
    if worker.is_alive():
        raise deadline.error()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _connect(target: _Target, infos: list[tuple], deadline: _Deadline) -> socket.socket:
    """A TCP connection to the first reachable vetted address (never a fresh DNS lookup)."""
    last_error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        timeout = deadline.remaining()
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    if isinstance(last_error, TimeoutError):
        raise deadline.error()
    raise MediaError("connection_error", f"cannot connect to {target.host!r}: {last_error}")


class _Watchdog:
    """Shuts the connection down at the deadline, so a peer trickling bytes cannot outlast it.

    Socket timeouts bound one recv() only; a server sending a byte a second would never trip
    them. Shutting down a dup of the socket wakes any blocked read (TLS included) with EOF.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock.dup()
        self.fired = threading.Event()
        self._timer = threading.Timer(max(0.0, deadline.at - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the peer

    def close(self) -> None:
        self._timer.cancel()
        self._sock.close()


def _get_once(target: _Target, limits: MediaLimits, deadline: _Deadline) -> bytes | str:
    """One GET: the body, or the Location of a redirect."""
    infos = _resolve(target, limits, deadline)
    sock = _connect(target, infos, deadline)
    watchdog = _Watchdog(sock, deadline)
    conn = _connection(target)
    try:
        if target.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        conn.sock = sock  # http.client uses this socket instead of connecting (and resolving)
        conn.request(
            "GET",
            target.path,
            headers={"User-Agent": _USER_AGENT, "Accept": "*/*", "Connection": "close"},
        )
        with conn.getresponse() as response:  # closing it releases the socket's last reference
            return _handle_response(response, target, limits, watchdog, deadline)
    except MediaError:
        raise
    except Exception as exc:
        if watchdog.fired.is_set() or isinstance(exc, TimeoutError):
            raise deadline.error() from exc
        if isinstance(exc, ssl.SSLError):
            raise MediaError("tls_error", f"TLS with {target.host!r} failed: {exc}") from exc
        if isinstance(exc, (OSError, http.client.HTTPException)):
            raise MediaError("connection_error", f"{target.host!r}: {exc!r}") from exc
        raise
    finally:
        watchdog.close()
        conn.close()
        sock.close()


def _connection(target: _Target) -> http.client.HTTPConnection:
    """A connection object used only to format requests and parse responses (Host header)."""
    if target.scheme == "https":
        return http.client.HTTPSConnection(target.host, target.port)
    return http.client.HTTPConnection(target.host, target.port)


def _header_text(value: str) -> str:
    """A header as its sender meant it: http.client decodes bytes as Latin-1, servers send UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _handle_response(
    response: http.client.HTTPResponse,
    target: _Target,
    limits: MediaLimits,
    watchdog: _Watchdog,
    deadline: _Deadline,
) -> bytes | str:
    if response.status in REDIRECT_STATUSES:
        location = response.getheader("Location")
        if not location:
            raise MediaError("http_error", f"HTTP {response.status} without a Location")
        return _header_text(location)
    if not 200 <= response.status < 300:
        raise MediaError("http_error", f"HTTP {response.status} {response.reason} from {target.host!r}")
    declared = response.length  # None when chunked or delimited by close
    if declared is not None and declared > limits.max_bytes:
        raise MediaError("too_large", f"Content-Length {declared} > {limits.max_bytes}")
    body = bytearray()
    while chunk := response.read1(_CHUNK):  # one recv per call, so the deadline is checked often
        body += chunk
        if len(body) > limits.max_bytes:
            raise MediaError("too_large", f"body longer than {limits.max_bytes} bytes")
        deadline.remaining()
    if watchdog.fired.is_set():  # the EOF that ended the loop was the watchdog's
        raise deadline.error()
    if declared is not None and len(body) != declared:
        raise MediaError("truncated", f"body has {len(body)} of {declared} declared bytes")
    return bytes(body)
