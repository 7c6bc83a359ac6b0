"""OpenAPI descriptions of the relay routes, served at ``/schema``.

Handlers read their raw bodies (so that every field error is relaypush's own), so litestar cannot
infer request bodies; they are described here by hand, with the envelope responses each route
can give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from relaypush.http.envelope import FailedBody, OkBody

__all__ = [
    "PUSH_OPERATION",
    "REGISTER_OPERATION",
    "failed",
    "ok",
]

_STRING: Final = Schema(type=OpenAPIType.STRING)

REGISTER_SCHEMA: Final = Schema(
    type=OpenAPIType.OBJECT,
    required=["client_id", "type", "token"],
    properties={
        "client_id": Schema(
            type=OpenAPIType.STRING,
            description="The client's did:key (a 'did:key:' prefix is stripped)",
        ),
        "type": Schema(
            type=OpenAPIType.STRING,
            enum=["apns", "apns-sandbox", "fcm", "noop", "webpush"],
            description="Push provider, matched case-insensitively",
        ),
        "token": Schema(
            type=OpenAPIType.STRING,
            description="The device token; for `webpush`, the browser's PushSubscription as "
            "JSON text (at most 2048 bytes)",
        ),
        "always_raw": Schema(
            type=OpenAPIType.BOOLEAN, description="Pushes to this client are raw bodies"
        ),
    },
)

_FLAGS: Final = Schema(
    type=OpenAPIType.INTEGER,
    minimum=0,
    description="Bitmask: Encrypted 1, Sign 2, Auth 4, Chat 8, Notify 16",
)

PUSH_SCHEMA: Final = Schema(
    one_of=[
        Schema(
            title="Legacy push",
            type=OpenAPIType.OBJECT,
            required=["id", "payload"],
            properties={
                "id": Schema(type=OpenAPIType.STRING, description="The relay's message id"),
                "payload": Schema(
                    one_of=[
                        Schema(
                            type=OpenAPIType.OBJECT,
                            required=["topic", "flags", "blob"],
                            properties={"topic": _STRING, "flags": _FLAGS, "blob": _STRING},
                        ),
                        Schema(type=OpenAPIType.STRING, description='"topic:flags:blob"'),
                    ]
                ),
            },
        ),
        Schema(
            title="Raw push (always_raw clients)",
            type=OpenAPIType.OBJECT,
            required=["topic", "tag", "message"],
            properties={
                "topic": _STRING,
                "tag": Schema(type=OpenAPIType.INTEGER, minimum=0),
                "message": _STRING,
            },
        ),
    ]
)


def _body(schema: Schema, description: str) -> RequestBody:
    return RequestBody(
        content={"application/json": OpenAPIMediaType(schema=schema)},
        description=description,
        required=True,
    )


@dataclass
class _RegisterOperation(Operation):
    """An operation whose request body is a register body."""

    def __post_init__(self) -> None:
        self.request_body = _body(REGISTER_SCHEMA, "The client to register")


@dataclass
class _PushOperation(Operation):
    """An operation whose request body is a push body."""

    def __post_init__(self) -> None:
        self.request_body = _body(PUSH_SCHEMA, "A legacy or a raw push, as the relay sends it")


REGISTER_OPERATION: Final[type[Operation]] = _RegisterOperation
PUSH_OPERATION: Final[type[Operation]] = _PushOperation


def ok(description: str) -> ResponseSpec:
    """A success response with the ``{"status": "OK"}`` envelope."""
    return ResponseSpec(data_container=OkBody, description=description)


def failed(description: str) -> ResponseSpec:
    """A failure response with the ``FAILED`` envelope."""
    return ResponseSpec(data_container=FailedBody, description=description)
