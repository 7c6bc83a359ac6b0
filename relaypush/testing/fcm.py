"""A stand-in for FCM HTTP v1 and Google's OAuth token endpoint, on one local server.

``POST /token`` serves JWT-bearer grants (:mod:`relaypush.testing.oauth`);
``POST /v1/projects/{project}/messages:send`` checks the bearer token and the project, checks
the body as FCM does (a ``message`` with a string ``token``, string ``data`` values), records
every request, and answers as scripted per device token::

    async with FcmStandIn() as fcm:
        provider = FcmProvider.from_service_account(
            fcm.service_account_info(), base_url=fcm.url, verify=fcm.ca_file
        )
        fcm.device("dead").error(404, "UNREGISTERED")
        fcm.device("flaky").fail(2)               # 503 UNAVAILABLE twice, then delivered
        fcm.device("busy").error(429, "QUOTA_EXCEEDED", retry_after=2)
        fcm.oauth.expire_tokens()                 # the next send gets a 401

Run it for a manual test: ``python -m relaypush.testing.fcm --port 9443`` writes the
service-account file and prints the settings that point relaypush at it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from relaypush.testing.http2 import StandInRequest, StandInResponse, StandInServer
from relaypush.testing.oauth import OAuthStandIn

__all__ = ["Answer", "DeviceScript", "FcmStandIn", "SendRequest", "error_body", "main"]

FCM_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
#: The ``errorCode`` values of FCM's ``FcmError`` detail; other codes are only an ``error.status``.
FCM_ERROR_CODES: Final = frozenset(
    {
        "UNSPECIFIED_ERROR",
        "INVALID_ARGUMENT",
        "UNREGISTERED",
        "SENDER_ID_MISMATCH",
        "QUOTA_EXCEEDED",
        "UNAVAILABLE",
        "INTERNAL",
        "THIRD_PARTY_AUTH_ERROR",
    }
)
_STATUS_NAMES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_SEND_PATH: Final = re.compile(r"/v1/projects/(?P<project>[^/]+)/messages:send")
_JSON: Final = {"content-type": "application/json; charset=UTF-8"}


def error_body(
    status: int, code: str, message: str = "", *, field_violation: str | None = None
) -> bytes:
    """An error document shaped like FCM's; ``field_violation`` adds a ``BadRequest`` detail."""
    details: list[dict[str, Any]] = []
    grpc_status = code
    if code in FCM_ERROR_CODES:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": code})
        grpc_status = _STATUS_NAMES.get(status, code)
    if field_violation is not None:
        violation = {"field": field_violation, "description": message}
        details.append(
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}
        )
    error = {"code": status, "message": message, "status": grpc_status, "details": details}
    return json.dumps({"error": error}).encode()


@dataclass(frozen=True, slots=True)
class Answer:
    """A scripted answer; ``status`` 200 delivers."""

    status: int = 200
    code: str = ""
    message: str = ""
    retry_after: str | None = None
    field_violation: str | None = None


@dataclass(slots=True)
class DeviceScript:
    """What the stand-in answers for one device token, in order; delivered when nothing is left.

    A step with ``times`` is used that many times, one without is used for good.
    """

    steps: list[tuple[Answer, int | None]] = field(default_factory=list)
    delay: float = 0.0

    def ok(self) -> DeviceScript:
        """Deliver (after any steps before this one)."""
        self.steps.append((Answer(), None))
        return self

    def error(
        self,
        status: int,
        code: str,
        *,
        message: str | None = None,
        retry_after: float | str | None = None,
        field_violation: str | None = None,
        times: int | None = None,
    ) -> DeviceScript:
        """Answer ``status`` with FCM error ``code``, ``times`` times (None: from now on)."""
        text = message if message is not None else f"stand-in {code}"
        after = None if retry_after is None else str(retry_after)
        self.steps.append((Answer(status, code, text, after, field_violation), times))
        return self

    def fail(self, times: int, status: int = 503, code: str = "UNAVAILABLE") -> DeviceScript:
        """Fail ``times`` times (503 ``UNAVAILABLE`` unless told otherwise), then deliver."""
        return self.error(status, code, times=times)

    def slow(self, seconds: float) -> DeviceScript:
        """Take ``seconds`` before every answer."""
        self.delay = seconds
        return self

    def next_answer(self) -> Answer:
        while self.steps:
            answer, times = self.steps[0]
            if times is None:
                return answer
            if times <= 1:
                self.steps.pop(0)
            else:
                self.steps[0] = (answer, times - 1)
            if times >= 1:
                return answer
        return Answer()


@dataclass(frozen=True, slots=True)
class SendRequest:
    """One ``messages:send`` request as the stand-in received it."""

    project: str
    bearer: str | None
    body: bytes
    json: Any
    http_version: str
    status: int

    @property
    def device_token(self) -> str | None:
        message = self.json.get("message") if isinstance(self.json, dict) else None
        token = message.get("token") if isinstance(message, dict) else None
        return token if isinstance(token, str) else None


class FcmStandIn:
    """FCM HTTP v1 and its token endpoint on one HTTP/2 + HTTP/1.1 server (TLS by default)."""

    def __init__(
        self,
        *,
        project_id: str = "relaypush-standin",
        tls: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: int = 3600,
    ) -> None:
        self.project_id = project_id
        self.oauth = OAuthStandIn(token_lifetime=token_lifetime)
        self.requests: list[SendRequest] = []
        self.server = StandInServer(self.handle, tls=tls, host=host, port=port)
        self._devices: dict[str, DeviceScript] = {}
        self._names = itertools.count(1)
        self.oauth.account(project_id)

    async def start(self) -> None:
        await self.server.start()
        self.oauth.token_url = self.token_url

    async def stop(self) -> None:
        await self.server.stop()

    async def __aenter__(self) -> FcmStandIn:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The base URL to use as ``RELAYPUSH_FCM_URL``."""
        return self.server.url

    @property
    def token_url(self) -> str:
        return f"{self.server.url}/token"

    @property
    def ca_file(self) -> Path:
        return self.server.ca_file

    def service_account_info(self, project_id: str | None = None) -> dict[str, str]:
        """A complete service-account document for ``project_id`` (default: the stand-in's)."""
        return self.oauth.account(project_id or self.project_id).info(self.token_url)

    def device(self, token: str) -> DeviceScript:
        """The script for device ``token``; add steps to it."""
        return self._devices.setdefault(token, DeviceScript())

    def sent_to(self, token: str) -> list[SendRequest]:
        """Requests that reached the device script of ``token``."""
        return [r for r in self.requests if r.device_token == token]

    async def handle(self, request: StandInRequest) -> StandInResponse:
        """Route one request: the token endpoint or ``messages:send``."""
        if request.method == "POST" and request.path == "/token":
            status, document = self.oauth.grant(request.body)
            return StandInResponse(status, _JSON, json.dumps(document).encode())
        match = _SEND_PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return _error(404, "NOT_FOUND", "Requested entity was not found.")
        return await self._send(request, match["project"])

    async def _send(self, request: StandInRequest, project: str) -> StandInResponse:
        auth = request.headers.get("authorization", "")
        bearer = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        try:
            document = json.loads(request.body)
        except ValueError:
            document = None
        response, script = self._check(bearer, project, document)
        if script is not None:
            if script.delay:
                await asyncio.sleep(script.delay)
            answer = script.next_answer()
            if answer.status == 200:
                name = f"projects/{project}/messages/0:{next(self._names)}%standin"
                response = StandInResponse(200, _JSON, json.dumps({"name": name}).encode())
            else:
                headers = dict(_JSON)
                if answer.retry_after is not None:
                    headers["retry-after"] = answer.retry_after
                body = error_body(
                    answer.status,
                    answer.code,
                    answer.message,
                    field_violation=answer.field_violation,
                )
                response = StandInResponse(answer.status, headers, body)
        assert response is not None
        self.requests.append(
            SendRequest(
                project, bearer, request.body, document, request.http_version, response.status
            )
        )
        return response

    def _check(
        self, bearer: str | None, project: str, document: Any
    ) -> tuple[StandInResponse | None, DeviceScript | None]:
        """FCM's own checks, in its order; the device's script when they all pass."""
        issued = self.oauth.token(bearer) if bearer else None
        if issued is None:
            refused = (
                "Request had invalid authentication credentials. Expected OAuth 2 access token"
            )
            return _error(401, "UNAUTHENTICATED", refused), None
        if issued.account.project_id != project:
            denied = f"Permission 'cloudmessaging.messages.create' denied on resource '{project}'"
            return _error(403, "PERMISSION_DENIED", denied), None
        message = document.get("message") if isinstance(document, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("token"), str):
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."), None
        data = message.get("data", {})
        bad = (
            [k for k, v in data.items() if not isinstance(v, str)]
            if isinstance(data, dict)
            else ["data"]
        )
        if bad:
            text = f"Invalid value at 'message.data[{bad[0]}].value' (TYPE_STRING)"
            return _error(400, "INVALID_ARGUMENT", text), None
        return None, self.device(message["token"])


def _error(status: int, code: str, message: str) -> StandInResponse:
    return StandInResponse(status, _JSON, error_body(status, code, message))


def _write_credentials(path: Path, info: dict[str, str]) -> Path:
    path.write_text(json.dumps(info, indent=2) + "\n")
    path.chmod(0o600)
    return path.resolve()


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FcmStandIn(
        project_id=args.project, tls=not args.no_tls, host=args.host, port=args.port
    ) as fcm:
        path = _write_credentials(Path(args.credentials_file), fcm.service_account_info())
        print(f"FCM stand-in on {fcm.url} (project {fcm.project_id}), token URL {fcm.token_url}")
        print(f"RELAYPUSH_FCM_URL={fcm.url}")
        print(f"RELAYPUSH_FCM_CREDENTIALS_FILE={path}")
        if not args.no_tls:
            print(f"SSL_CERT_FILE={fcm.ca_file}  # the stand-in's CA, for clients to trust")
        print("every device token is delivered to; Ctrl-C stops", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m relaypush.testing.fcm``: serve the stand-in until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m relaypush.testing.fcm", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--project", default="relaypush-standin", help="Firebase project id")
    parser.add_argument(
        "--credentials-file",
        default="fcm-standin-service-account.json",
        help="where to write the service-account JSON",
    )
    parser.add_argument("--no-tls", action="store_true", help="plain HTTP, no CA to trust")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
