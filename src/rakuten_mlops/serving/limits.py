"""Request size limit, enforced before the body is parsed."""

from __future__ import annotations


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
        body = b'{"detail":"request body too large"}'
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
