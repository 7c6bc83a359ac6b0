"""A Web Push stand-in: a push service that checks VAPID, decrypts and records every message.

``POST /push/<id>`` is a subscription's push resource (RFC 8030). Each request is checked as a
browser vendor's push service checks it, in this order, and refused with the status it would
give:

- 404: no subscription ``<id>`` (or it was dropped with :meth:`SubscriptionScript.gone`);
- 401: no ``Authorization: vapid t=<JWT>, k=<key>``, a JWT that is not ES256 signed by ``k``,
  whose ``aud`` is not the stand-in's origin, whose ``exp`` is past or more than 24 hours away,
  or whose ``sub`` is not a ``mailto:`` or ``https:`` URL (RFC 8292);
- 403: the subscription was made with another application server key than ``k``;
- 400: ``Content-Encoding`` is not ``aes128gcm``, ``TTL`` is missing or not a number,
  ``Urgency`` or ``Topic`` is malformed, or the body does not decrypt with the subscription's
  keys (RFC 8291);
- 413: a body over 4096 bytes.

Then the subscription's script answers (201 with a ``Location`` by default). Every request is
recorded with what it decrypted to::

    async with WebPushStandIn() as push:
        browser = push.subscribe(application_server_key=vapid_public_key)
        token = browser.token()                  # what the browser registers: its JSON
        push.script(browser).fail(2)             # 503 twice, then 201
        push.script(browser).error(429, retry_after=1, times=1)
        push.script(browser).gone()              # 410 from now on
        await push.received(1)
        push.sent_to(browser)[0].json            # the decrypted message

:class:`BrowserSubscription` is the browser's side alone (a P-256 key pair and an auth secret for
an endpoint, and decryption), for tests of your own that need a subscription.

Run ``python -m relaypush.testing.webpush --port 8443`` to serve one from a shell: it prints the
settings that point relaypush at it and the JSON of a subscription to register.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import re
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from relaypush.delivery.webpush_ece import DecryptionError, decrypt, public_bytes
from relaypush.testing.http2 import StandInRequest, StandInResponse, StandInServer

__all__ = [
    "BrowserSubscription",
    "PushRecord",
    "SubscriptionScript",
    "WebPushStandIn",
    "main",
]

MAX_BODY: Final = 4096
MAX_EXPIRY: Final = 24 * 3600
_PATH: Final = re.compile(r"/push/(?P<id>[A-Za-z0-9_-]+)")
_VAPID: Final = re.compile(r"vapid\s+t=(?P<t>[A-Za-z0-9_.-]+)\s*,\s*k=(?P<k>[A-Za-z0-9_-]+)", re.I)
_URGENCIES: Final = frozenset({"very-low", "low", "normal", "high"})
_TOPIC: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SUBJECT: Final = re.compile(r"(mailto:[^\s@]+@[^\s@]+|https://\S+)")
_TEXT: Final = {"content-type": "text/plain; charset=utf-8"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


@dataclass(frozen=True, slots=True)
class BrowserSubscription:
    """A browser's push subscription: the endpoint, and the keys only the browser holds."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @classmethod
    def new(cls, endpoint: str) -> BrowserSubscription:
        """A fresh P-256 key pair and 16-byte auth secret for ``endpoint``."""
        return cls(endpoint, ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16))

    @property
    def p256dh(self) -> bytes:
        """The public key (uncompressed point) the browser hands out."""
        return public_bytes(self.private_key.public_key())

    def to_json(self) -> dict[str, Any]:
        """``PushSubscription.toJSON()``, as a browser gives it."""
        keys = {"p256dh": _b64(self.p256dh), "auth": _b64(self.auth)}
        return {"endpoint": self.endpoint, "expirationTime": None, "keys": keys}

    def token(self) -> str:
        """The JSON text a ``webpush`` client registers as its token."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    def decrypt(self, body: bytes) -> bytes:
        """The message of an ``aes128gcm`` body sent to this subscription."""
        return decrypt(body, self.private_key, self.auth)


@dataclass(frozen=True, slots=True)
class PushRecord:
    """One request as the stand-in saw it; ``message`` is what it decrypted to (None when it
    was refused before that), ``claims`` the VAPID JWT's claims when it was read."""

    subscription_id: str
    headers: Mapping[str, str]
    body: bytes
    status: int
    http_version: str
    message: bytes | None = None
    claims: Mapping[str, Any] | None = None
    vapid_key: str | None = None

    @property
    def json(self) -> Any:
        """The decrypted message as JSON."""
        assert self.message is not None, f"nothing was decrypted (answered {self.status})"
        return json.loads(self.message)


@dataclass(slots=True)
class SubscriptionScript:
    """What the stand-in answers for one subscription, in order; 201 when nothing is left.

    A step with ``times`` is used that many times, one without is used for good.
    """

    steps: list[tuple[int, str | None, int | None]] = field(default_factory=list)
    delay: float = 0.0

    def ok(self) -> SubscriptionScript:
        """Deliver (after any steps before this one)."""
        self.steps.append((201, None, None))
        return self

    def error(
        self, status: int, *, retry_after: float | str | None = None, times: int | None = None
    ) -> SubscriptionScript:
        """Answer ``status``, ``times`` times (None: from now on)."""
        after = None if retry_after is None else str(retry_after)
        self.steps.append((status, after, times))
        return self

    def fail(self, times: int, status: int = 503) -> SubscriptionScript:
        """Fail ``times`` times (503 unless told otherwise), then deliver."""
        return self.error(status, times=times)

    def gone(self) -> SubscriptionScript:
        """The browser unsubscribed: 410 from now on."""
        return self.error(410)

    def slow(self, seconds: float) -> SubscriptionScript:
        """Take ``seconds`` before every answer."""
        self.delay = seconds
        return self

    def next_answer(self) -> tuple[int, str | None]:
        while self.steps:
            status, after, times = self.steps[0]
            if times is None:
                return status, after
            if times <= 1:
                self.steps.pop(0)
            else:
                self.steps[0] = (status, after, times - 1)
            if times >= 1:
                return status, after
        return 201, None


@dataclass(slots=True)
class _Subscriber:
    browser: BrowserSubscription
    application_server_key: str | None
    script: SubscriptionScript = field(default_factory=SubscriptionScript)


class WebPushStandIn:
    """A push service on an HTTP/2 + HTTP/1.1 server (TLS by default) on ``host:port``."""

    def __init__(
        self,
        *,
        tls: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = StandInServer(self.handle, tls=tls, host=host, port=port)
        self.records: list[PushRecord] = []
        self.record = record
        self.statuses: dict[int, int] = {}
        self._clock = clock
        self._subscribers: dict[str, _Subscriber] = {}
        self._names = itertools.count(1)
        self._arrival = asyncio.Event()

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def __aenter__(self) -> WebPushStandIn:
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
        """The stand-in's origin, ``https://127.0.0.1:<port>``: the ``aud`` VAPID must name."""
        return self.server.url

    @property
    def ca_file(self) -> Path:
        """The CA to trust (``RELAYPUSH_WEBPUSH_CA_FILE``)."""
        return self.server.ca_file

    def subscribe(self, *, application_server_key: str | None = None) -> BrowserSubscription:
        """A new subscription on this push service. With ``application_server_key`` (the VAPID
        public key in base64url, as ``pushManager.subscribe`` takes it), requests signed with
        any other key are refused with 403, as the browsers' push services do."""
        subscription_id = secrets.token_urlsafe(18)
        browser = BrowserSubscription.new(f"{self.url}/push/{subscription_id}")
        self._subscribers[subscription_id] = _Subscriber(browser, application_server_key)
        return browser

    def script(self, subscription: BrowserSubscription) -> SubscriptionScript:
        """The answers for ``subscription``; add steps to it."""
        return self._subscribers[_id_of(subscription)].script

    def sent_to(self, subscription: BrowserSubscription) -> list[PushRecord]:
        """The requests that reached ``subscription``'s push resource."""
        wanted = _id_of(subscription)
        return [r for r in self.records if r.subscription_id == wanted]

    async def received(self, count: int) -> None:
        """Wait until ``count`` requests in all have been recorded."""
        while len(self.records) < count:
            self._arrival.clear()
            await self._arrival.wait()

    async def handle(self, request: StandInRequest) -> StandInResponse:
        match = _PATH.fullmatch(request.path)
        if match is None:
            return StandInResponse(404, _TEXT, b"no such push resource")
        if request.method != "POST":
            return StandInResponse(405, _TEXT, b"push with POST")
        subscription_id = match["id"]
        subscriber = self._subscribers.get(subscription_id)
        refused, claims, key = self._check(request, subscriber)
        message: bytes | None = None
        if refused is None:
            assert subscriber is not None
            try:
                message = subscriber.browser.decrypt(request.body)
            except DecryptionError as exc:
                refused = StandInResponse(400, _TEXT, f"cannot decrypt: {exc}".encode())
        if refused is not None:
            response = refused
        else:
            assert subscriber is not None
            script = subscriber.script
            if script.delay:
                await asyncio.sleep(script.delay)
            status, after = script.next_answer()
            headers = dict(_TEXT)
            if after is not None:
                headers["retry-after"] = after
            if status == 201:
                headers["location"] = f"{self.url}/message/{next(self._names)}"
            if status == 410:
                self._subscribers.pop(subscription_id, None)
            response = StandInResponse(status, headers, b"" if status == 201 else b"scripted")
        self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        if self.record:
            self.records.append(
                PushRecord(
                    subscription_id,
                    request.headers,
                    request.body,
                    response.status,
                    request.http_version,
                    message,
                    claims,
                    key,
                )
            )
        self._arrival.set()
        return response

    def _check(
        self, request: StandInRequest, subscriber: _Subscriber | None
    ) -> tuple[StandInResponse | None, dict[str, Any] | None, str | None]:
        """A push service's checks, in its order: the refusal (None if none), the VAPID
        claims and key when they could be read."""
        if subscriber is None:
            return StandInResponse(404, _TEXT, b"subscription not found"), None, None
        vapid = _VAPID.fullmatch(request.headers.get("authorization", "").strip())
        if vapid is None:
            return _refuse(401, "Authorization: vapid t=<JWT>, k=<key> is required"), None, None
        try:
            claims = self._verify(vapid["t"], vapid["k"])
        except ValueError as exc:
            return _refuse(401, f"VAPID: {exc}"), None, vapid["k"]
        expected = subscriber.application_server_key
        if expected is not None and vapid["k"] != expected:
            why = "the VAPID key is not the one the subscription was made with"
            return _refuse(403, why), claims, vapid["k"]
        headers = request.headers
        if headers.get("content-encoding", "").lower() != "aes128gcm":
            return _refuse(400, "Content-Encoding must be aes128gcm"), claims, vapid["k"]
        ttl = headers.get("ttl", "")
        if not ttl.isdigit():
            return _refuse(400, "TTL must be a number of seconds"), claims, vapid["k"]
        urgency = headers.get("urgency")
        if urgency is not None and urgency not in _URGENCIES:
            return _refuse(400, "Urgency must be very-low, low, normal or high"), claims, vapid["k"]
        topic = headers.get("topic")
        if topic is not None and _TOPIC.fullmatch(topic) is None:
            why = "Topic must be at most 32 characters of base64url"
            return _refuse(400, why), claims, vapid["k"]
        if len(request.body) > MAX_BODY:
            return _refuse(413, f"over {MAX_BODY} bytes"), claims, vapid["k"]
        return None, claims, vapid["k"]

    def _verify(self, token: str, key: str) -> dict[str, Any]:
        """The claims of a VAPID JWT signed by ``key``; ``ValueError`` saying what is wrong."""
        parts = token.split(".")
        if len(parts) != 3:
            raise ValueError("the JWT has not three parts")
        header, claims = (json.loads(_unb64(p)) for p in parts[:2])
        if not isinstance(header, dict) or header.get("alg") != "ES256":
            raise ValueError("the JWT is not ES256")
        signature = _unb64(parts[2])
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64(key))
            if len(signature) != 64:
                raise InvalidSignature
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            public.verify(der, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ValueError("the JWT's signature does not verify with k") from None
        if not isinstance(claims, dict):
            raise ValueError("the claims are not a JSON object")
        if claims.get("aud") != self.url:
            raise ValueError(f"aud must be {self.url}, not {claims.get('aud')!r}")
        exp, now = claims.get("exp"), self._clock()
        if not isinstance(exp, int) or exp <= now or exp > now + MAX_EXPIRY:
            raise ValueError("exp must be in the next 24 hours")
        subject = claims.get("sub")
        if not isinstance(subject, str) or _SUBJECT.fullmatch(subject) is None:
            raise ValueError("sub must be a mailto: or https: URL")
        return claims


def _id_of(subscription: BrowserSubscription) -> str:
    return subscription.endpoint.rsplit("/", 1)[1]


def _refuse(status: int, why: str) -> StandInResponse:
    return StandInResponse(status, _TEXT, why.encode())


async def _serve(args: argparse.Namespace) -> None:
    push = WebPushStandIn(tls=not args.no_tls, host=args.host, port=args.port, record=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with push:
        browser = push.subscribe(application_server_key=args.application_server_key)
        print(f"url {push.url}", flush=True)
        if push.server.tls:
            print(f"ca_file {push.ca_file}", flush=True)
        print(f"RELAYPUSH_WEBPUSH_HOSTS={args.host}", flush=True)
        if push.server.tls:
            print(f"RELAYPUSH_WEBPUSH_CA_FILE={push.ca_file}", flush=True)
        print(f"subscription {browser.token()}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m relaypush.testing.webpush``: serve a stand-in until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m relaypush.testing.webpush", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    parser.add_argument("--no-tls", action="store_true", help="plain TCP (HTTP/1.1 or h2c)")
    parser.add_argument(
        "--application-server-key",
        help="the VAPID public key (base64url) the printed subscription is made with",
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
