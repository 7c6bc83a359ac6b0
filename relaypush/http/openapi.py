"""OpenAPI descriptions of the routes, served at ``/schema`` (``/schema/openapi.json``).

Handlers read their raw bodies and path parameters (so that every field error is relaypush's
own), so litestar can infer neither request bodies nor the constraints on ids: they are described
here by hand, as the domain checks them, with every response a route can give (the relay envelope
for failures). A test runs schemathesis against the served document to keep the two in step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Final

from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
)

from relaypush.domain.ids import MAX_ID_BYTES, MAX_ID_LENGTH
from relaypush.domain.payload import DEFAULT_MAX_TOKEN_BYTES, MAX_FLAGS, MAX_TAG, MAX_TOKEN_BYTES
from relaypush.http.envelope import FailedBody, OkBody

__all__ = [
    "CLIENT_ID",
    "CLIENT_IDS",
    "MESSAGE_ID",
    "PUSH_OPERATION",
    "REGISTER_OPERATION",
    "TENANT_ID",
    "TENANT_IDS",
    "documented",
    "failed",
    "ok",
    "query",
    "text",
]

_STRING: Final = Schema(type=OpenAPIType.STRING)
_NO_CONTROLS: Final = r"^[^\u0000-\u001f\u007f-\u009f]+$"
_NO_CONTROLS_NO_SLASH: Final = r"^[^\u0000-\u001f\u007f-\u009f/]+$"

CLIENT_ID: Final = Schema(
    type=OpenAPIType.STRING,
    min_length=1,
    max_length=MAX_ID_BYTES,
    pattern=_NO_CONTROLS_NO_SLASH,
    description=f"A client id: 1 to {MAX_ID_BYTES} bytes of UTF-8, no control characters, no "
    "'/' (a 'did:key:' prefix is stripped)",
)
MESSAGE_ID: Final = Schema(
    type=OpenAPIType.STRING,
    min_length=1,
    max_length=MAX_ID_BYTES,
    pattern=_NO_CONTROLS,
    description=f"The relay's message id: 1 to {MAX_ID_BYTES} bytes of UTF-8, no control "
    "characters",
)
TENANT_ID: Final = Schema(
    type=OpenAPIType.STRING,
    min_length=1,
    max_length=MAX_ID_LENGTH,
    pattern=r"^[A-Za-z0-9_-]+$",
    description=f"A tenant id: 1 to {MAX_ID_LENGTH} characters of A-Z, a-z, 0-9, '_' and '-'",
)


#: Path parameters of the client routes, and of the tenant routes (where ``id`` is a tenant).
CLIENT_IDS: Final[Mapping[str, Schema]] = {"id": CLIENT_ID, "tenant_id": TENANT_ID}
TENANT_IDS: Final[Mapping[str, Schema]] = {"id": TENANT_ID}

REGISTER_SCHEMA: Final = Schema(
    type=OpenAPIType.OBJECT,
    required=["client_id", "type", "token"],
    properties={
        "client_id": CLIENT_ID,
        "type": Schema(
            type=OpenAPIType.STRING,
            # apns, apns-sandbox, fcm, noop or webpush, in any case
            pattern=r"^([Aa][Pp][Nn][Ss](-[Ss][Aa][Nn][Dd][Bb][Oo][Xx])?|[Ff][Cc][Mm]"
            r"|[Nn][Oo][Oo][Pp]|[Ww][Ee][Bb][Pp][Uu][Ss][Hh])$",
            description="Push provider: apns, apns-sandbox, fcm, noop or webpush, in any case; it "
            "must be configured for the tenant (else 400 provider_not_available)",
        ),
        "token": Schema(
            type=OpenAPIType.STRING,
            min_length=1,
            max_length=max(DEFAULT_MAX_TOKEN_BYTES, *MAX_TOKEN_BYTES.values()),
            description=f"The device token: at most {DEFAULT_MAX_TOKEN_BYTES} bytes of UTF-8; for "
            "`webpush`, the browser's PushSubscription as JSON text (at most 2048 bytes)",
        ),
        "always_raw": Schema(
            type=[OpenAPIType.BOOLEAN, OpenAPIType.NULL],
            description="Pushes to this client are raw bodies (null: false)",
        ),
    },
)

_FLAGS: Final = Schema(
    type=OpenAPIType.INTEGER,
    minimum=0,
    maximum=MAX_FLAGS,
    description="Bitmask: Encrypted 1, Sign 2, Auth 4, Chat 8, Notify 16. Without Encrypted, "
    "`blob` must be base64 of a Notify message {title, body, icon?, url?, type?}",
)
_NONEMPTY: Final = Schema(type=OpenAPIType.STRING, min_length=1)

PUSH_SCHEMA: Final = Schema(
    one_of=[
        Schema(
            title="Legacy push",
            type=OpenAPIType.OBJECT,
            required=["id", "payload"],
            properties={
                "id": MESSAGE_ID,
                "payload": Schema(
                    one_of=[
                        Schema(
                            type=OpenAPIType.OBJECT,
                            required=["topic", "flags", "blob"],
                            properties={"topic": _NONEMPTY, "flags": _FLAGS, "blob": _NONEMPTY},
                        ),
                        Schema(
                            type=OpenAPIType.STRING,
                            pattern=r"^[^:]+:[0-9]{1,10}:[^:]+$",
                            description='"topic:flags:blob"',
                        ),
                    ]
                ),
            },
        ),
        Schema(
            title="Raw push (always_raw clients)",
            type=OpenAPIType.OBJECT,
            required=["topic", "tag", "message"],
            properties={
                "topic": _NONEMPTY,
                "tag": Schema(type=OpenAPIType.INTEGER, minimum=0, maximum=MAX_TAG),
                "message": _NONEMPTY,
            },
        ),
    ]
)

TENANT_CREATE_SCHEMA: Final = Schema(
    type=OpenAPIType.OBJECT, required=["id"], properties={"id": TENANT_ID}
)


def _file(description: str) -> Schema:
    return Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, description=description)


APNS_FORM_SCHEMA: Final = Schema(
    type=OpenAPIType.OBJECT,
    required=["apns_topic"],
    properties={
        "apns_topic": Schema(type=OpenAPIType.STRING, description="The app's bundle id"),
        "apns_certificate": _file(".p12 (a text field: base64 of it)"),
        "apns_certificate_password": _STRING,
        "apns_pkcs8_pem": _file(".p8 signing key"),
        "apns_key_id": _STRING,
        "apns_team_id": _STRING,
    },
)
FCM_FORM_SCHEMA: Final = Schema(
    type=OpenAPIType.OBJECT,
    required=["credentials"],
    properties={"credentials": _file("The Firebase service-account JSON")},
)
WEBPUSH_FORM_SCHEMA: Final = Schema(
    type=OpenAPIType.OBJECT,
    required=["vapid_private_key", "subject"],
    properties={
        "vapid_private_key": _file("The VAPID key pair's P-256 private key, PEM"),
        "subject": Schema(type=OpenAPIType.STRING, description="A mailto: or https: URL"),
    },
)


def json_body(schema: Schema, description: str) -> RequestBody:
    return RequestBody(
        content={"application/json": OpenAPIMediaType(schema=schema)},
        description=description,
        required=True,
    )


def form_body(schema: Schema, description: str) -> RequestBody:
    return RequestBody(
        content={
            "multipart/form-data": OpenAPIMediaType(schema=schema),
            "application/x-www-form-urlencoded": OpenAPIMediaType(schema=schema),
        },
        description=description,
        required=True,
    )


def query(name: str, schema: Schema, description: str) -> Parameter:
    """An optional query parameter."""
    return Parameter(
        name=name, param_in="query", schema=schema, description=description, required=False
    )


def documented(
    *,
    body: RequestBody | None = None,
    ids: Mapping[str, Schema] | None = None,
    queries: Sequence[Parameter] = (),
) -> type[Operation]:
    """An operation class for a route: its request ``body``, the schemas of its path
    parameters (``ids``, by name) and its query parameters, which litestar cannot infer from
    handlers that read them."""

    @dataclasses.dataclass
    class _Documented(Operation):
        def __post_init__(self) -> None:
            if body is not None:
                self.request_body = body
            parameters = [
                dataclasses.replace(p, schema=ids[p.name])
                if ids and isinstance(p, Parameter) and p.param_in == "path" and p.name in ids
                else p
                for p in self.parameters or ()
            ]
            self.parameters = [*parameters, *queries] or None

    return _Documented


REGISTER_OPERATION: Final = documented(
    body=json_body(REGISTER_SCHEMA, "The client to register"), ids=CLIENT_IDS
)
PUSH_OPERATION: Final = documented(
    body=json_body(PUSH_SCHEMA, "A legacy or a raw push, as the relay sends it"), ids=CLIENT_IDS
)


def ok(description: str) -> ResponseSpec:
    """A success response with the ``{"status": "OK"}`` envelope."""
    return ResponseSpec(data_container=OkBody, description=description, generate_examples=False)


def failed(description: str) -> ResponseSpec:
    """A failure response with the ``FAILED`` envelope."""
    return ResponseSpec(data_container=FailedBody, description=description, generate_examples=False)


def body(container: type, description: str) -> ResponseSpec:
    """A success response whose JSON body is ``container`` (a msgspec Struct)."""
    return ResponseSpec(data_container=container, description=description, generate_examples=False)


def text(description: str, media_type: str = "text/plain") -> ResponseSpec:
    """A success response of plain text."""
    return ResponseSpec(
        data_container=str, description=description, media_type=media_type, generate_examples=False
    )
