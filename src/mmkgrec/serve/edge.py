"""The HTTP edge: what a request must pass before any route sees it, and the server's limits.

- :class:`RequestGuard` (pure ASGI middleware), in this order:
  the ``Host`` header against an allow-list (400 ``invalid_host``: a DNS-rebinding page that
  resolves its own name to 127.0.0.1 still sends its own name), the ``Origin`` of unsafe
  methods against the same list (403 ``forbidden_origin``: no cross-site form or fetch can post
  feedback to a local server), a body only as ``application/json`` (415
  ``unsupported_media_type``: what a cross-site page may send without a CORS preflight is
  refused), at most ``max_body_bytes`` (413 ``body_too_large``, from ``Content-Length`` before
  anything is read, or while counting a chunked body), read completely within
  ``body_timeout`` seconds (408 ``body_timeout``; the connection is closed).
- :func:`server_config`: uvicorn with the h11 protocol below, a connection limit
  (``limit_concurrency``: beyond it uvicorn answers 503), a short keep-alive, a cap on the size
  of the request head (``h11_max_incomplete_event_size``).
- :class:`GuardedH11Protocol`: uvicorn's h11 protocol plus a header timeout: a connection that
  has not completed its request line and headers within ``header_timeout`` seconds of opening
  (or of the first byte of a later request) is closed, so half-sent heads cannot hold
  connections either.

Every refusal is the API's JSON error ``{"error": kind, "detail": text}``, and no header value
is echoed back in full.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

#: defaults of ``mmkgrec serve`` (options of the same names)
MAX_BODY_BYTES = 1 << 20
BODY_TIMEOUT_S = 10.0
HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 128
KEEP_ALIVE_S = 5
MAX_HEAD_BYTES = 16 * 1024
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _clip(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def host_name(value: str | None) -> str | None:
    """The host of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``), lower-case
    and without the port; None when it is not one."""
    if value is None:
        return None
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not _is_port(value[end + 1:])):
            return None
        return value[1:end] or None
    name, sep, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if sep and not port.isdigit():
        return None
    name = name.rstrip(".")
    return name or None


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit()


def origin_host(origin: str) -> str | None:
    """The host of an ``Origin`` header (``scheme://host[:port]``); None for ``null`` or junk."""
    scheme, sep, rest = origin.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https") or "/" in rest:
        return None
    return host_name(rest)


def default_allowed_hosts(bind: str) -> list[str]:
    """The bound host (unless it is a wildcard such as 0.0.0.0) and the loopback names."""
    hosts = [] if bind in WILDCARD_BINDS else [host_name(bind) or bind.strip("[]").lower()]
    return list(dict.fromkeys(hosts + list(LOCAL_HOSTS)))


async def send_error(send, status: int, kind: str, detail: str, close: bool = False) -> None:
    """A JSON error response straight from the middleware."""
    body = json.dumps({"error": kind, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Host / Origin allow-list, JSON-only bodies, body size cap and body-read deadline (see the
    module docstring). ``allowed_hosts`` None or containing ``"*"``: any Host and Origin."""

    def __init__(self, app, allowed_hosts: Iterable[str] | None = LOCAL_HOSTS,
                 max_body_bytes: int = MAX_BODY_BYTES, body_timeout: float = BODY_TIMEOUT_S):
        self.app = app
        hosts = None if allowed_hosts is None else {h.strip().strip("[]").lower().rstrip(".")
                                                    for h in allowed_hosts}
        self.allowed = None if hosts is None or "*" in hosts else frozenset(hosts)
        self.max_body_bytes, self.body_timeout = int(max_body_bytes), float(body_timeout)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            name = key.decode("latin-1").lower()
            headers.setdefault(name, value.decode("latin-1"))
        method = scope.get("method", "GET")
        if self.allowed is not None:
            raw = headers.get("host")
            if host_name(raw) not in self.allowed:
                await send_error(send, 400, "invalid_host",
                                 f"Host header {_clip(raw or '')} is not one this server answers "
                                 f"to (mmkgrec serve --allowed-host)")
                return
            origin = headers.get("origin")
            if origin is not None and method not in SAFE_METHODS \
                    and origin_host(origin) not in self.allowed:
                await send_error(send, 403, "forbidden_origin",
                                 f"a {method} from origin {_clip(origin)} is not allowed")
                return
        length = headers.get("content-length")
        chunked = "transfer-encoding" in headers
        if length is not None:
            if not length.strip().isdigit():
                await send_error(send, 400, "bad_request", "invalid Content-Length", close=True)
                return
            if int(length) > self.max_body_bytes:
                await send_error(send, 413, "body_too_large",
                                 f"the body has {int(length)} bytes; at most {self.max_body_bytes}",
                                 close=True)
                return
        if not chunked and (length is None or int(length) == 0):
            await self.app(scope, receive, send)  # no body to read
            return
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/")
                                                and media.endswith("+json")):
            await send_error(send, 415, "unsupported_media_type",
                             "request bodies must be sent as Content-Type: application/json",
                             close=True)
            return
        import anyio  # here, so that importing this module (the CLI does) stays cheap

        chunks, total, complete = [], 0, False
        with anyio.move_on_after(self.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client went away
                body = message.get("body", b"")
                total += len(body)
                if total > self.max_body_bytes:
                    await send_error(send, 413, "body_too_large",
                                     f"the body has more than {self.max_body_bytes} bytes",
                                     close=True)
                    return
                chunks.append(body)
                if not message.get("more_body", False):
                    complete = True
                    break
        if not complete:
            await send_error(send, 408, "body_timeout",
                             f"the body was not received within {self.body_timeout:g} s", close=True)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _guarded_h11():
    """:class:`GuardedH11Protocol`, defined on first use (uvicorn is imported lazily)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol that closes a connection whose request head is not complete
        within ``header_timeout`` seconds (of opening, or of the first byte of a later request)."""

        header_timeout: float = HEADER_TIMEOUT_S
        balance: ConnectionBalance | None = None
        _head_timer = None
        _requests_seen = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()
            if self.balance is not None:
                self.balance.opened()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                if self._head_timer is None and self.conn.trailing_data[0]:
                    self._arm()  # a partial head of a later request
            else:  # a head is complete: the body deadline is RequestGuard's
                self._requests_seen = True
                self._cancel()

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._expire)

        def _cancel(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expire(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.trailing_data[0] or not self._requests_seen:
                self.transport.close()  # a head still incomplete, or none ever sent

        def connection_lost(self, exc) -> None:
            self._cancel()
            if self.balance is not None:
                self.balance.closed()
            super().connection_lost(exc)

    return GuardedH11Protocol


def freeze_startup_heap() -> None:
    """Collect once, then exempt everything alive (the loaded run, torch, pandas, FastAPI) from
    later collections (``gc.freeze``): a full collection of a served process walks ~300k
    objects and stalls it for ~250 ms (measured on lastfm-kgcn's MKGCN run), which would land
    in the latency tail. Call when the service is built, before serving."""
    import gc

    gc.collect()
    gc.freeze()


class ConnectionBalance:
    """Spreads keep-alive connections evenly over the workers of one listening socket.

    Every worker counts its open connections in its own slot of ``counts`` (shared memory, one
    writer per slot). A worker that has just accepted a connection while holding more than its
    share (the mean over the workers, plus one) pauses its event loop for ``pause`` seconds, so
    the others, woken by the same pending connections, accept the rest. Without it a burst of
    new connections goes to whichever worker is awake first (measured: 8 of 8, or ~2/3 of 32).
    No pause in the steady state; only while connections arrive."""

    def __init__(self, counts, slot: int, pause: float = 0.002):
        self.counts, self.slot, self.pause = counts, int(slot), float(pause)
        self.counts[self.slot] = 0

    def opened(self) -> None:
        mine = self.counts[self.slot] = self.counts[self.slot] + 1
        if mine > sum(self.counts) / len(self.counts) + 1:
            time.sleep(self.pause)  # let another worker take the next pending connection

    def closed(self) -> None:
        self.counts[self.slot] = max(0, self.counts[self.slot] - 1)


def server_config(app, host: str = "127.0.0.1", port: int = 8000, *,
                  max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT_S,
                  keep_alive: int = KEEP_ALIVE_S, max_head_bytes: int = MAX_HEAD_BYTES,
                  log_level: str = "warning", balance: ConnectionBalance | None = None):
    """A uvicorn ``Config`` for ``app`` with the limits of the module docstring (1 worker);
    ``balance``: this worker's share of ``serve --workers N``'s connections."""
    import uvicorn

    protocol = type("GuardedH11Protocol", (_guarded_h11(),),
                    {"header_timeout": float(header_timeout), "balance": balance})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, workers=1,
                          http=protocol, limit_concurrency=max_connections,
                          timeout_keep_alive=keep_alive, h11_max_incomplete_event_size=max_head_bytes)
