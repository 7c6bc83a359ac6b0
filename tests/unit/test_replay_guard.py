"""Several API processes share one memory of relay signatures: a replay fails on any of them."""

from __future__ import annotations

import json
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from litestar import Litestar

from eventstore import InMemoryEventLog, InMemoryOnce
from relaypush.auth.relay_signature import make_relay_signature
from relaypush.config import Settings
from relaypush.http.app import create_app
from relaypush.metrics import Registry
from relaypush.service import RelayService
from tests.asgi import asgi_client


async def test_a_signature_used_on_one_worker_is_refused_on_another() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    settings = Settings(relay_public_key=public, rate_limit_per_minute=0)
    log = InMemoryEventLog()
    guard = InMemoryOnce(ttl=settings.signature_max_age)

    def worker() -> Litestar:
        service = RelayService(log, enabled_providers=lambda _t: frozenset({"noop"}))
        return create_app(
            settings=settings, service=service, metrics=Registry(), replay_guard=guard
        )

    first, second = worker(), worker()
    async with asgi_client(first) as a, asgi_client(second) as b:
        r = await a.post("/clients", json={"client_id": "w1", "type": "noop", "token": "t"})
        assert r.status_code == 200
        body = json.dumps({"id": "m1", "payload": "ab:1:YQ=="}).encode()
        sig, ts = make_relay_signature(key, int(time.time()), body)
        headers = {"X-Ed25519-Signature": sig, "X-Ed25519-Timestamp": ts}
        assert (await a.post("/clients/w1", content=body, headers=headers)).status_code == 202
        replayed = await b.post("/clients/w1", content=body, headers=headers)
        assert replayed.status_code == 401
        assert replayed.json()["fields"][0]["field"] == "X-Ed25519-Signature"
        fresh_sig, ts2 = make_relay_signature(key, int(time.time()) + 1, body)
        again = {"X-Ed25519-Signature": fresh_sig, "X-Ed25519-Timestamp": ts2}
        assert (await b.post("/clients/w1", content=body, headers=again)).status_code == 200
