"""HTTP limits: request body size, header count, and the read timeouts of the server."""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class BodyLimitMiddleware:
    """413 for request bodies over `max_bytes`, before they are read into memory.

    Field limits are checked only after the whole body has been parsed; this bounds what
    a client can make the server buffer first (by Content-Length, or while streaming).
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(send)
                    return
        received = 0
        refused = False

        async def counting_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    await self._refuse(send)
                    refused = True  # the app sees a disconnect and stops reading
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message):
            if not refused:  # the app's own answer to the cut-off body is dropped
                await send(message)

        await self.app(scope, counting_receive, send_unless_refused)

    async def _refuse(self, send) -> None:
        await send_closing_error(send, 413, b"request body too large")


async def send_closing_error(send, status: int, detail: bytes) -> None:
    """A JSON `{"detail": ...}` error that also closes the connection: what follows on it
    (the rest of an oversized request) is not read."""
    body = b'{"detail":"%s"}' % detail
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HeaderLimitMiddleware:
    """431 for a request line + headers over `max_bytes`, or over `max_headers` fields.

    h11 refuses a header block that is still incomplete past `max_incomplete_event_size`
    bytes (what keeps 64 MB headers out of memory), but one that arrives whole in a
    single read (up to the event loop's read size, 256 KB) is parsed whatever its size;
    and it does not count fields. This makes both limits exact.
    """

    def __init__(self, app, max_bytes: int, max_headers: int):
        self.app = app
        self.max_bytes = max_bytes
        self.max_headers = max_headers

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (problem := self._problem(scope)):
            await send_closing_error(send, 431, problem)
            return
        await self.app(scope, receive, send)

    def _problem(self, scope) -> bytes | None:
        headers = scope.get("headers", ())
        if len(headers) > self.max_headers:
            return b"too many request header fields"
        # As on the wire: "METHOD target HTTP/1.1\r\n", then "name: value\r\n" each.
        size = len(scope["method"]) + len(scope.get("raw_path") or b"") + 12
        size += len(scope.get("query_string") or b"") + 1
        size += sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.max_bytes:
            return b"request header fields too large"
        return None


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the two read timeouts uvicorn lacks.

    uvicorn (0.54) times out only an idle keep-alive connection *after* a response: a
    connection that never completes its request line and headers (slowloris), or that
    stops sending its body half-way, is held forever, and with it a slot of
    `limit_concurrency`. This subclass arms one timer:

    * header deadline: from the connection's start (or the first byte of the next request
      on a keep-alive connection) until h11 has parsed the whole header block; never
      re-armed by more bytes, so trickling one byte a second does not extend it;
    * body idle timeout: between two reads of the request body (like nginx's
      client_body_timeout), not counted while uvicorn itself paused reading because the
      app has not consumed what it got.

    On expiry the connection is closed (as nginx does for client_header_timeout); an app
    waiting for the body sees a disconnect. The timeouts come from the class attributes,
    set by `timed_protocol()` from the settings.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_timer = None
        self._read_timer_kind = None
        self._arm("header", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            # A request has started (or the connection is new): its headers' deadline
            # runs from the first byte and is not extended by the next ones.
            if self._read_timer_kind != "header":
                self._arm("header", self.header_timeout)
        elif state is h11.SEND_BODY:
            self._arm("body", self.body_timeout)
        else:  # the whole request is in: the app's time, then uvicorn's keep-alive timer
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, kind: str, seconds: float) -> None:
        self._disarm()
        self._read_timer_kind = kind
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out, kind, seconds)

    def _disarm(self) -> None:
        if getattr(self, "_read_timer", None) is not None:
            self._read_timer.cancel()
        self._read_timer = None
        self._read_timer_kind = None

    def _read_timed_out(self, kind: str, seconds: float) -> None:
        self._read_timer = None
        self._read_timer_kind = None
        if self.transport.is_closing():
            return
        if kind == "body" and self.flow.read_paused:  # waiting for the app, not the client
            self._arm(kind, seconds)
            return
        self.logger.info("closing %s: its request %s took over %ss", self.client, kind, seconds)
        self.transport.close()


def timed_protocol(header_timeout: float, body_timeout: float) -> type[TimedH11Protocol]:
    """A TimedH11Protocol class with these timeouts (uvicorn instantiates the class)."""
    return type(
        "TimedH11Protocol",
        (TimedH11Protocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )
