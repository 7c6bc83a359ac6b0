"""The push route without the framework around it: the one route that carries the relay's load.

``POST /clients/{id}`` and ``POST /{tenant_id}/clients/{id}`` are answered here, in front of
litestar's routing, dependency injection, signature models and response objects, by the same
function the litestar route calls (:func:`relaypush.http.relay.accept_push`), with the same
body limit, the same errors in the same envelope (:func:`relaypush.http.errors.response_for`),
and under the same request log line, metrics and request id (:class:`RequestObserver` wraps
this). Every other request, and any path this does not recognise exactly, goes to the app; the
litestar route stays what the OpenAPI document describes, and what answers when this is absent.
"""

from __future__ import annotations

from typing import Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from relaypush.domain.errors import ErrorInfo, FieldError
from relaypush.http.errors import error_response, response_for
from relaypush.http.observe import request_id_of
from relaypush.http.relay import RelayContext, accept_push

__all__ = ["FastPush"]

_JSON: Final = (b"content-type", b"application/json")
_CLIENTS: Final = "clients"


class _TooLarge(Exception):
    """The body is over the limit."""


class _Gone(Exception):
    """The client went away before its body arrived."""


class FastPush:
    """ASGI: answers pushes itself, hands everything else to ``app``."""

    def __init__(self, app: ASGIApp, relay: RelayContext, *, max_body_size: int) -> None:
        self._app = app
        self._relay = relay
        self._max_body = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        parts = scope["path"].split("/")
        if len(parts) == 3 and parts[0] == "" and parts[1] == _CLIENTS and parts[2]:
            tenant_id, client_id, template = None, parts[2], "/clients/{id}"
        elif len(parts) == 4 and parts[0] == "" and parts[2] == _CLIENTS and parts[1] and parts[3]:
            tenant_id, client_id, template = parts[1], parts[3], "/{tenant_id}/clients/{id}"
        else:
            await self._app(scope, receive, send)
            return
        scope["path_template"] = template
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        try:
            body = await self._body(headers, receive)
            status, answer = await accept_push(
                self._relay,
                tenant_id=tenant_id,
                client_id=client_id,
                body=body,
                headers=headers,
                request_id=request_id_of(scope),
            )
        except _TooLarge:
            await self._too_large(send)
            return
        except _Gone:
            return
        except Exception as exc:
            response = response_for(exc, method="POST", path=scope["path"])
            extra = [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
            ]
            await _answer(send, response.status_code or 500, response.content, extra)
            return
        await _answer(send, status, answer)

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        what = f"the request body is over the limit of {self._max_body} bytes"
        response = error_response(
            413,
            errors=(ErrorInfo("request_too_large", what),),
            fields=(FieldError("body", what, "body"),),
        )
        await _answer(send, 413, response.content)


async def _answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [_JSON, (b"content-length", str(len(body)).encode()), *(headers or ())],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
