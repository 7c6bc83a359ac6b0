"""The Web Push demo page (``/demo/webpush``) in headless Chromium, end to end but for one step.

Chromium's own push service is Google's (FCM, reached through GCM registration): headless and
offline, ``pushManager.subscribe()`` never settles, and Chromium cannot be pointed at another
push service. So the test replaces ``PushManager.prototype.subscribe`` before the page loads
with one that answers a subscription of the Web Push stand-in (keys made by
:class:`~relaypush.testing.webpush.BrowserSubscription`), and records the
``applicationServerKey`` the page passed. Everything else is real: the page registers over HTTP,
the relay's push goes through JetStream and the dispatcher to the stand-in, which checks VAPID
and decrypts it, and what it decrypted is handed to the page's service worker as a push event
(DevTools' ``ServiceWorker.deliverPushMessage``), which shows it and tells the page.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.async_api import BrowserContext

from eventstore.jetstream import JetStreamEventLog
from relaypush.config import Settings
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.vapid import VapidKey
from relaypush.domain.events import (
    AnyEvent,
    ClientRegistered,
    NotificationDelivered,
    decode_event,
)
from relaypush.http.app import create_app
from relaypush.metrics import Registry
from relaypush.runtime import build_providers, enabled_providers
from relaypush.service import RelayService
from relaypush.testing.webpush import WebPushStandIn
from tests.browser.conftest import ServeApp

SUBJECT = "mailto:demo@example.com"

# Stands in for the browser's push service registration; see the module's docstring.
FAKE_SUBSCRIBE = """
PushManager.prototype.subscribe = async function (options) {
  const key = new Uint8Array(options.applicationServerKey);
  window.subscribedWith = btoa(String.fromCharCode(...key))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  const json = SUBSCRIPTION;
  return { endpoint: json.endpoint, options, toJSON: () => json };
};
"""


async def wait_for_events(
    log: JetStreamEventLog, what: Callable[[list[AnyEvent]], bool], within: float = 30
) -> list[AnyEvent]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        events = [decode_event(e.data) async for e in log.read()]
        if what(events):
            return events
        await asyncio.sleep(0.05)
    raise AssertionError("the log never satisfied the condition")


async def test_the_demo_page_registers_itself_and_its_worker_shows_the_push(
    chromium: BrowserContext,
    serve_app: ServeApp,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "vapid.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_key = VapidKey(key, SUBJECT).public_key
    async with WebPushStandIn() as push:
        settings = Settings(
            stream_name=unique_name.upper(),
            subject_prefix=unique_name,
            vapid_private_key_file=key_file,
            vapid_subject=SUBJECT,
            webpush_hosts=("127.0.0.1",),
            webpush_ca_file=push.ca_file,
            send_timeout=5.0,
        )
        log = await JetStreamEventLog.connect(
            nats_url, stream=unique_name.upper(), prefix=unique_name
        )
        metrics = Registry()
        providers = build_providers(settings)
        dispatcher = Dispatcher(
            log, providers, deadline=60.0, durable=f"d-{unique_name}", metrics=metrics
        )
        service = RelayService(log, enabled_providers=enabled_providers(settings), metrics=metrics)
        app = create_app(settings=settings, service=service, metrics=metrics)
        browser = push.subscribe(application_server_key=public_key)
        stop = asyncio.Event()
        worker = asyncio.create_task(dispatcher.run(stop))
        try:
            async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
                await chromium.grant_permissions(["notifications"], origin=url)
                await chromium.add_init_script(
                    FAKE_SUBSCRIBE.replace("SUBSCRIPTION", browser.token())
                )
                page = await chromium.new_page()
                workers: dict[str, str] = {}
                devtools = await chromium.new_cdp_session(page)
                devtools.on(
                    "ServiceWorker.workerRegistrationUpdated",
                    lambda event: workers.update(
                        (r["scopeURL"], r["registrationId"]) for r in event["registrations"]
                    ),
                )
                await devtools.send("ServiceWorker.enable")

                await page.goto(f"{url}/demo/webpush?client_id=demo-1")
                assert await page.input_value("#key") == public_key  # from /demo/webpush/config
                await page.click("#subscribe")
                await page.wait_for_function(
                    "document.getElementById('status').textContent !== 'not subscribed'"
                    " && !/ing$/.test(document.getElementById('status').textContent)"
                )
                assert await page.text_content("#status") == "registered as demo-1"
                assert await page.evaluate("window.subscribedWith") == public_key
                events = await wait_for_events(log, lambda ev: bool(ev))
                (registered,) = [e for e in events if isinstance(e, ClientRegistered)]
                assert registered.provider == "webpush"
                assert json.loads(registered.token) == browser.to_json()

                notify = {"title": "Hi", "body": "From the relay"}
                blob = base64.b64encode(json.dumps(notify).encode()).decode()
                r = await http.post(
                    "/clients/demo-1", json={"id": "m1", "payload": f"t1:16:{blob}"}
                )
                assert r.status_code == 202
                await wait_for_events(
                    log, lambda ev: any(isinstance(e, NotificationDelivered) for e in ev)
                )
                (record,) = push.sent_to(browser)
                assert record.message is not None
                assert record.json["title"] == "Hi"

                registration = workers[f"{url}/demo/webpush/"]
                await devtools.send(
                    "ServiceWorker.deliverPushMessage",
                    {
                        "origin": url,
                        "registrationId": registration,
                        "data": record.message.decode(),
                    },
                )
                await page.wait_for_selector("#received li")
                assert await page.text_content("#received li") == "Hi: From the relay"
        finally:
            stop.set()
            await worker
            for provider in providers.values():
                await provider.close()
            await log.close()


async def test_the_demo_serves_its_worker_and_config_without_a_key(
    serve_app: ServeApp, chromium: BrowserContext, nats_url: str, unique_name: str
) -> None:
    log = await JetStreamEventLog.connect(nats_url, stream=unique_name.upper(), prefix=unique_name)
    try:
        settings = Settings(stream_name=unique_name.upper(), subject_prefix=unique_name)
        service = RelayService(log, enabled_providers=enabled_providers(settings))
        app = create_app(settings=settings, service=service, metrics=Registry())
        async with serve_app(app) as url:
            page = await chromium.new_page()
            await page.goto(f"{url}/demo/webpush")
            await page.click("#subscribe")
            await page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('failed')"
            )
            status: Any = await page.text_content("#status")
            assert "no VAPID public key" in status
            async with httpx.AsyncClient(base_url=url) as http:
                worker = await http.get("/demo/webpush/sw.js")
                assert worker.headers["content-type"].startswith("text/javascript")
                assert "showNotification" in worker.text
                assert (await http.get("/demo/webpush/config")).json() == {"vapid_public_key": None}
    finally:
        await log.close()
