"""An APNs stand-in: answers ``POST /3/device/<token>`` as Apple does, over TLS and HTTP/2.

Token mode (after :meth:`ApnsStandIn.add_key`): ``authorization: bearer <ES256 JWT>`` with a
known ``kid`` in its header, ``iss`` = the key's team id and an ``iat`` under an hour old, else
403 ``MissingProviderToken``, ``InvalidProviderToken`` or ``ExpiredProviderToken``. Without keys
it is in certificate mode and takes requests without a token (client certificates are not
checked). Then the required headers (``apns-topic``, ``apns-push-type``, ``apns-priority``, a
UUID ``apns-id``) and the body (1 to 4096 bytes) are checked. Every request is recorded in
:attr:`ApnsStandIn.requests`; the answer is the next one scripted for the token, else 200 with
the ``apns-id`` echoed::

    async with ApnsStandIn() as apns:
        apns.script("a1b2", reason(410, "Unregistered"), fail_times(2, 503), slow(5.0))

``hold(event)`` keeps a stream open until the test sets ``event``, and ``await
apns.received(n)`` waits for the n-th request, so tests wait on conditions, not on the clock.
Run ``python -m relaypush.testing.apns --port 2197`` to serve one from a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import re
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from relaypush.testing.http2 import StandInRequest, StandInResponse, StandInServer

__all__ = [
    "ApnsRecord",
    "ApnsStandIn",
    "Scripted",
    "bare",
    "fail_times",
    "hold",
    "ok",
    "reason",
    "slow",
    "status",
]

_PATH = re.compile(r"/3/device/([^/?]+)")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PUSH_TYPES = frozenset(
    {"alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity"}
)
_REASONS = {400: "BadRequest", 403: "Forbidden", 410: "Unregistered", 413: "PayloadTooLarge"}
_REASONS |= {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}


@dataclass(frozen=True, slots=True)
class ApnsRecord:
    """One request as the stand-in saw it; ``jwt`` is the bearer token, if any."""

    token: str
    headers: Mapping[str, str]
    body: bytes
    jwt: str | None
    connection: int


@dataclass(frozen=True, slots=True)
class Scripted:
    """One scripted answer, given ``times`` times in a row; build them with the functions below."""

    status: int = 200
    reason: str | None = None
    delay: float = 0.0
    bare: bool = False
    retry_after: str | None = None
    times: int = 1
    until: asyncio.Event | None = None


def ok() -> Scripted:
    """200 with the ``apns-id`` echoed."""
    return Scripted()


def reason(code: int, name: str, *, retry_after: float | None = None) -> Scripted:
    """``code`` with ``{"reason": name}`` (and a ``timestamp`` for 410), as APNs does."""
    after = None if retry_after is None else f"{retry_after:g}"
    return Scripted(status=code, reason=name, retry_after=after)


def status(code: int) -> Scripted:
    """``code`` with the ``apns-id`` header and no body."""
    return Scripted(status=code)


def fail_times(n: int, code: int) -> Scripted:
    """``n`` answers of ``code`` with its usual reason; what is scripted next (or 200) follows."""
    return Scripted(status=code, reason=_REASONS.get(code, "InternalServerError"), times=n)


def slow(seconds: float, then: Scripted | None = None) -> Scripted:
    """``then`` (200 by default) after ``seconds``."""
    return replace(then or ok(), delay=seconds)


def hold(release: asyncio.Event, then: Scripted | None = None) -> Scripted:
    """``then`` (200 by default) once ``release`` is set: keeps a stream open on purpose."""
    return replace(then or ok(), until=release)


def bare(code: int = 500) -> Scripted:
    """``code`` with no JSON body and no ``apns-id``: aioapns's own client waits forever."""
    return Scripted(status=code, bare=True)


@dataclass(slots=True)
class _Key:
    team_id: str
    public_key: ec.EllipticCurvePublicKey


class ApnsStandIn:
    """The APNs stand-in; ``clock`` (seconds since the epoch) judges JWT ages."""

    def __init__(
        self,
        *,
        topics: frozenset[str] | None = None,
        tls: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        max_concurrent_streams: int = 1000,
        record: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = StandInServer(
            self.handle,
            tls=tls,
            host=host,
            port=port,
            max_concurrent_streams=max_concurrent_streams,
        )
        self.requests: list[ApnsRecord] = []
        self.topics = topics
        self.record = record
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._verified: dict[str, tuple[str, int]] = {}  # jwt -> (kid, iat), signature checked
        self._scripts: dict[str, deque[Scripted]] = {}
        self._arrival = asyncio.Event()

    def add_key(
        self,
        key_id: str,
        team_id: str,
        public_key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey | bytes,
    ) -> None:
        """Accept JWTs signed by this key (a key object, or PEM of a public or ``.p8`` key)."""
        if isinstance(public_key, bytes):
            loaded = (
                serialization.load_pem_private_key(public_key, password=None)
                if b"PRIVATE KEY" in public_key
                else serialization.load_pem_public_key(public_key)
            )
            if not isinstance(loaded, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
                raise ValueError("APNs keys are P-256 (ES256) keys")
            public_key = loaded
        if isinstance(public_key, ec.EllipticCurvePrivateKey):
            public_key = public_key.public_key()
        self._keys[key_id] = _Key(team_id, public_key)
        self._verified.clear()

    def script(self, token: str, *responses: Scripted) -> None:
        """Answer the next requests for ``token`` with ``responses``, in order, then 200."""
        queue = self._scripts.setdefault(token, deque())
        for response in responses:
            queue.extend([replace(response, times=1)] * response.times)

    async def received(self, count: int) -> None:
        """Wait until ``count`` requests in all have been recorded."""
        while len(self.requests) < count:
            self._arrival.clear()
            await self._arrival.wait()

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def __aenter__(self) -> ApnsStandIn:
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
        return self.server.url

    @property
    def ca_file(self) -> Path:
        return self.server.ca_file

    def goaway(self) -> None:
        self.server.goaway()

    async def handle(self, request: StandInRequest) -> StandInResponse:
        """Answer one request as APNs would."""
        apns_id = request.headers.get("apns-id", "")
        answer_id = apns_id if _UUID.fullmatch(apns_id) else str(uuid.uuid4()).upper()
        if request.method != "POST":
            return _error(405, "MethodNotAllowed", answer_id)
        match = _PATH.fullmatch(request.path)
        if match is None:
            return _error(404, "BadPath", answer_id)
        token = match.group(1)
        authorization = request.headers.get("authorization")
        jwt = None
        if authorization is not None:  # anything but "bearer <jwt>" is an invalid token
            scheme, _, value = authorization.partition(" ")
            jwt = value.strip() if scheme.lower() == "bearer" else ""
        if self.record:
            self.requests.append(
                ApnsRecord(token, request.headers, request.body, jwt, request.connection)
            )
            self._arrival.set()
        refusal = self._check_auth(jwt) or self._check_request(request)
        if refusal is not None:
            return _error(refusal[0], refusal[1], answer_id)
        queue = self._scripts.get(token)
        scripted = queue.popleft() if queue else ok()
        if scripted.until is not None:
            await scripted.until.wait()
        if scripted.delay:
            await asyncio.sleep(scripted.delay)  # the latency being simulated
        if scripted.bare:
            return StandInResponse(scripted.status)
        headers = {"apns-id": answer_id}
        if scripted.retry_after is not None:
            headers["retry-after"] = scripted.retry_after
        if scripted.reason is None:
            return StandInResponse(scripted.status, headers)
        return _error(scripted.status, scripted.reason, answer_id, headers, self._clock())

    def _check_auth(self, jwt: str | None) -> tuple[int, str] | None:
        if not self._keys:
            return None  # certificate mode
        if jwt is None:
            return 403, "MissingProviderToken"
        verified = self._verified.get(jwt) or self._verify(jwt)
        if verified is None:
            return 403, "InvalidProviderToken"
        if self._clock() - verified[1] > 3600:
            return 403, "ExpiredProviderToken"
        return None

    def _verify(self, jwt: str) -> tuple[str, int] | None:
        """(kid, iat) of a JWT whose ES256 signature, ``kid`` and ``iss`` check out, else None."""
        try:
            header_b64, claims_b64, signature_b64 = jwt.split(".")
            header = json.loads(_unb64(header_b64))
            claims = json.loads(_unb64(claims_b64))
            signature = _unb64(signature_b64)
            key = self._keys[header["kid"]]
            if header.get("alg") != "ES256" or claims.get("iss") != key.team_id:
                return None
            iat = claims["iat"]
            if not isinstance(iat, int) or len(signature) != 64:
                return None
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            signed = f"{header_b64}.{claims_b64}".encode()
            key.public_key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        except (ValueError, KeyError, TypeError, AttributeError, InvalidSignature):
            return None
        if len(self._verified) > 1024:
            self._verified.clear()
        self._verified[jwt] = (header["kid"], iat)
        return self._verified[jwt]

    def _check_request(self, request: StandInRequest) -> tuple[int, str] | None:
        headers = request.headers
        topic = headers.get("apns-topic")
        if "apns-id" in headers and not _UUID.fullmatch(headers["apns-id"]):
            return 400, "BadMessageId"
        if not topic:
            return 400, "MissingTopic"
        if self.topics is not None and topic not in self.topics:
            return 400, "TopicDisallowed"
        if headers.get("apns-push-type") not in _PUSH_TYPES:
            return 400, "InvalidPushType"
        if headers.get("apns-priority") not in ("1", "5", "10"):
            return 400, "BadPriority"
        if not request.body:
            return 400, "PayloadEmpty"
        if len(request.body) > 4096:
            return 413, "PayloadTooLarge"
        return None


def _error(
    code: int,
    why: str,
    apns_id: str,
    headers: Mapping[str, str] | None = None,
    now: float | None = None,
) -> StandInResponse:
    document: dict[str, object] = {"reason": why}
    if code == 410:
        document["timestamp"] = int((now if now is not None else time.time()) * 1000)
    all_headers = {"apns-id": apns_id, "content-type": "application/json", **(headers or {})}
    return StandInResponse(code, all_headers, json.dumps(document).encode())


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc


async def _serve(args: argparse.Namespace, keys: list[tuple[str, str, bytes]]) -> None:
    apns = ApnsStandIn(tls=not args.no_tls, host=args.host, port=args.port, record=False)
    for key_id, team_id, pem in keys:
        apns.add_key(key_id, team_id, pem)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with apns:
        print(f"url {apns.url}", flush=True)
        if apns.server.tls:
            print(f"ca_file {apns.ca_file}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m relaypush.testing.apns``: serve a stand-in until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m relaypush.testing.apns", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-tls", action="store_true", help="plain TCP (HTTP/1.1 or h2c)")
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY_ID:TEAM_ID:PEM",
        help="accept JWTs of this key (public or .p8 PEM); none means certificate mode",
    )
    args = parser.parse_args(argv)
    keys = []
    for spec in args.key:
        key_id, team_id, path = spec.split(":", 2)
        keys.append((key_id, team_id, Path(path).read_bytes()))
    asyncio.run(_serve(args, keys))


if __name__ == "__main__":
    main()
