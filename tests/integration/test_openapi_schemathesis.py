"""schemathesis against the served OpenAPI document, on a real app over the real event log.

The app runs under uvicorn in a thread of its own (its own event loop, its own NATS and
PostgreSQL connections: the test session's servers, a stream and schemas of its own), configured
as in production: a relay key (pushes are signed by the session below), the admin token and a
tenant JWT secret, a credential store. Every operation of ``/schema/openapi.json`` gets schema-
conforming and schema-violating requests (a bounded, derandomized number of each), and every
response goes through schemathesis's checks: no 5xx, status codes and content types documented,
bodies and headers conforming to their schemas, violations refused with a 4xx, unsupported
methods answered 405 with ``Allow``.

Left out, each for a reason: ``positive_data_acceptance`` (what a schema cannot say is refused
with a documented 400: an id of 255 characters that is more than 255 bytes, a cleartext blob
that is not base64 Notify JSON, a client type the tenant has no credentials for),
``max_response_time`` (no timing assertions), and the stateful checks (``use_after_free``,
``ensure_resource_availability``), which need linked operations this API does not declare.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import hypothesis
import hypothesis.errors
import nats
import nats.js.errors
import psycopg
import pytest
import requests
import schemathesis
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck
from psycopg import sql
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from eventstore.jetstream import JetStreamEventLog
from relaypush.auth.relay_signature import make_relay_signature
from relaypush.config import Settings
from relaypush.http.app import create_app
from relaypush.metrics import Registry
from relaypush.privacy import open_sealer
from relaypush.runtime import enabled_providers
from relaypush.sealing import generate_key
from relaypush.service import RelayService
from relaypush.tenancy.store import open_credential_store

pytestmark = pytest.mark.integration

ADMIN = "schemathesis-admin-token"
RELAY_KEY = Ed25519PrivateKey.generate()
RELAY_PUBLIC = RELAY_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
#: Per operation and generation mode: enough to reach every branch of the shapes, short for CI.
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
    allow_header_conformance,
    ignored_auth,
]
_PUSH_PATH = re.compile(r"^(/[^/]+)?/clients/[^/]+$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The app under uvicorn in a thread with its own event loop."""

    def __init__(self, settings: Settings, database_url: str, nats_url: str) -> None:
        self.settings = settings
        self.database_url = database_url
        self.nats_url = nats_url
        self.started = threading.Event()
        self.failure: BaseException | None = None
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=self._run, name="schemathesis-app", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self.failure = exc
            self.started.set()

    async def _serve(self) -> None:
        settings = self.settings
        log = await JetStreamEventLog.connect(
            self.nats_url, stream=settings.stream_name, prefix=settings.subject_prefix
        )
        try:
            service = RelayService(
                log,
                enabled_providers=enabled_providers(settings),
                sealer=await open_sealer(log, settings),
            )
            async with open_credential_store(settings, self.database_url) as credentials:
                app = create_app(
                    settings=settings,
                    service=service,
                    metrics=Registry(),
                    event_log=log,
                    credentials=credentials,
                )
                config = uvicorn.Config(
                    app,
                    host=settings.host,
                    port=settings.port,
                    log_config=None,
                    access_log=False,
                    lifespan="off",
                    proxy_headers=False,
                )
                self.server = uvicorn.Server(config)
                self.started.set()
                await self.server.serve()
        finally:
            await log.close()
            await self._clean_up()

    async def _clean_up(self) -> None:
        settings = self.settings
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True
        ) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(settings.credentials_schema)
                )
            )
        connection = await nats.connect(self.nats_url)
        try:
            js = connection.jetstream()
            await js.delete_stream(settings.stream_name)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(f"KV_{settings.stream_name}_KEYS")
        finally:
            await connection.close()

    def __enter__(self) -> Server:
        self.thread.start()
        self.started.wait(60)
        url = f"http://{self.settings.host}:{self.settings.port}/health"
        for _ in range(600):
            if self.failure is not None:
                raise self.failure
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError("the app did not start")

    def __exit__(self, *_: object) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(60)


class RelaySession(requests.Session):
    """Sends what each route needs to get past authentication: the relay's signature on pushes
    (over the bytes sent), the admin token on tenant and admin routes. Keeps every answer's
    status."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[str, int]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        path = urlsplit(request.url or "").path
        if request.method == "POST" and _PUSH_PATH.match(path):
            body = request.body or b""
            assert isinstance(body, str | bytes), "bodies are sent whole, never streamed"
            raw = body.encode() if isinstance(body, str) else body
            signature, timestamp = make_relay_signature(RELAY_KEY, int(time.time()), raw)
            request.headers["X-Ed25519-Signature"] = signature
            request.headers["X-Ed25519-Timestamp"] = timestamp
        elif path.startswith(("/tenants", "/admin")):
            request.headers["Authorization"] = f"Bearer {ADMIN}"
        response = super().send(request, **kwargs)
        self.answers.append((f"{request.method} {path}", response.status_code))
        return response


@pytest.fixture(name="base_url")
def fx_base_url(nats_url: str, database_url: str, unique_name: str) -> Iterator[str]:
    port = free_port()
    settings = Settings(
        host="127.0.0.1",
        port=port,
        stream_name=unique_name.upper(),
        subject_prefix=unique_name,
        admin_token=ADMIN,
        tenant_jwt_secret="schemathesis-tenant-jwt-secret-32b",
        relay_public_key=RELAY_PUBLIC,
        rate_limit_per_minute=0,
        credentials_key=generate_key(),
        credentials_schema=f"{unique_name}_credentials",
        send_timeout=2.0,
    )
    with Server(settings, database_url, nats_url):
        yield f"http://127.0.0.1:{port}"


def test_the_served_openapi_holds_for_every_operation(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json")
    session = RelaySession()
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) >= 20
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @hypothesis.settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                phases=[hypothesis.Phase.generate],
            )
            @hypothesis.given(case=strategy)
            def run(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(base_url=base_url, session=session, checks=CHECKS)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # nothing of this operation can violate its schema (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
                assert not operation.body, operation.label
                assert not operation.path_parameters, operation.label
            except Exception as exc:  # collect every operation's failures, then report them all
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)
    # the examples reached the handlers, and got past authentication to success
    answered = {label for label, status in session.answers if status < 300}
    assert len(session.answers) > 20 * EXAMPLES
    assert len(answered) >= len(operations) // 2, sorted(answered)
