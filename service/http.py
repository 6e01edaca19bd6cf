"""The HTTP/1.1 protocol under uvicorn, with the bounds uvicorn leaves out.

uvicorn's httptools protocol accepts a request head of any size (20 sockets with a 16 MB header
took the server from 302 to 651 MB), waits for a head for ever (a socket that sends a header byte
now and then holds its connection), and lets one address open any number of connections. This
subclass adds, before the application sees anything:

* **431** when a request head (request line + headers) passes ``max_header_bytes``;
* **408** when a started head is not complete within ``header_timeout_s`` (from its first byte);
* **429** + ``Retry-After`` when an address already holds ``max_connections_per_client``
  connections (trusted proxies are exempt: their clients are many): the connection's request
  head is read first and answered, never sent to the application.

Each answer carries ``Connection: close`` and ends in a lingering close, as nginx's: the server
stops sending (a FIN), reads and discards what the client still sends for at most ``LINGER_S``,
and closes once the client has. Closing at once with request bytes unread (or arriving after the
close) makes the kernel answer with a reset, which may reach the client before it has read the
answer: that client sees a reset, not a 429.

Each request's scope also carries the socket's peer address under `PEER`, before uvicorn's
proxy headers replace the client address: whether a request came through a trusted proxy.

`protocol_class(settings)` gives the class to pass as uvicorn's ``http=``. It subclasses
uvicorn's HttpToolsProtocol and uses its internals, so pyproject.toml pins uvicorn's minor
version (tested there).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

PEER = "transerve.peer"  # scope key: (host, port) of the socket's peer
LINGER_S = 2.0  # a refused connection drains the client's bytes this long at most
LINGER_BYTES = 1 << 20  # and at most this many

_REASONS = {408: b"Request Timeout", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above; `protocol_class` makes one per server."""

    max_header_bytes = 0
    header_timeout_s = 0.0
    max_per_client = 0
    per_client: Counter[str]  # open connections per address, for this server
    exempt: frozenset[str] = frozenset()  # trusted proxies: no per-address bound

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # bytes of the head being received (0: none started)
        self._head_timer: asyncio.TimerHandle | None = None
        self._counted: str | None = None
        self._refusal: tuple[int, str] | None = None
        self._over = False  # past its address's connection bound: its head is answered 429
        self._lingering: asyncio.TimerHandle | None = None
        self._drained = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else ""
        if self.max_per_client and host and host not in self.exempt:
            self.per_client[host] += 1
            self._counted = host
            if self.per_client[host] > self.max_per_client:
                self._over = True
                if self.header_timeout_s:  # one that sends nothing is held no longer than a slow head
                    self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[PEER] = self.client  # type: ignore[literal-required]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if self._counted:
            self.per_client[self._counted] -= 1
            if self.per_client[self._counted] <= 0:
                del self.per_client[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:  # refused: the client's bytes are read and dropped
            self._drained += len(data)
            if self._drained > LINGER_BYTES:
                self.transport.close()
            return
        in_head = self._head_bytes > 0 or self.cycle is None or self.cycle.response_complete
        if in_head and self._head_timer is None and self.header_timeout_s:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_late)
        self._refusal = None
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # as uvicorn does
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal:  # raised by on_headers_complete below
                self._refuse(*self._refusal)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._head_timer is not None and self.transport and not self.transport.is_closing():
            self._head_bytes += len(data)  # still no complete head after this chunk
            if self._head_bytes > self.max_header_bytes:
                self._refuse(431, f"request head larger than {self.max_header_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._stop_timer()
        if self._over:
            self._refusal = (429, self._over_message())
            raise ValueError("connection bound")  # stops the parser: data_received answers
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) + 16
        if size > self.max_header_bytes:  # the whole head came in one chunk
            self._refusal = (431, f"request head larger than {self.max_header_bytes} bytes")
            raise ValueError("request head too large")  # stops the parser: data_received answers
        super().on_headers_complete()

    def _stop_timer(self) -> None:
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._over:  # past the bound and silent: the bound is the answer
            self._refuse(429, self._over_message())
        else:
            self._refuse(408, f"request head not received within {self.header_timeout_s:g} s")

    def _over_message(self) -> str:
        return f"more than {self.max_per_client} connections from one address"

    def _refuse(self, status: int, message: str) -> None:
        self._stop_timer()
        if self.transport is None or self.transport.is_closing():
            return
        body = json.dumps({"error": message}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"%sconnection: close\r\n\r\n%s"
            % (status, _REASONS[status], len(body), b"retry-after: 1\r\n" if status == 429 else b"", body)
        )
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the answer, then a FIN; the client's close ends the connection
        self._lingering = self.loop.call_later(LINGER_S, self.transport.close)


def protocol_class(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``: `settings`' bounds, its own connection counts."""
    bounds = {
        "max_header_bytes": settings.max_header_bytes,
        "header_timeout_s": settings.header_timeout_s,
        "max_per_client": settings.max_connections_per_client,
        "per_client": Counter(),
        "exempt": frozenset(settings.trusted_proxies),
    }
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), bounds)
