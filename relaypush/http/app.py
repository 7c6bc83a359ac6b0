"""``create_app``: the litestar application for the relay API, built from values, not the env.

The app wires the routes (:mod:`relaypush.http.relay`, :mod:`relaypush.http.tenants`,
:mod:`relaypush.http.operations`), the one exception-to-envelope map (:mod:`relaypush.http.errors`),
the Web Push demo page (:mod:`relaypush.http.demo`), the body size limit, the per-address rate
limit, OpenAPI at ``/schema`` and, around everything,
CORS for the tenant routes (:mod:`relaypush.http.cors`) and the request log and metrics
(:mod:`relaypush.http.observe`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from eventstore import EventLog
from eventstore.once import Once
from relaypush.auth.relay_signature import RelaySignatureVerifier
from relaypush.config import Settings
from relaypush.http.admin import admin_route_handlers
from relaypush.http.auth import TenantAuthorizer
from relaypush.http.cors import TenantCors
from relaypush.http.demo import demo_route_handlers
from relaypush.http.errors import EXCEPTION_HANDLERS
from relaypush.http.fastpush import FastPush
from relaypush.http.observe import RequestObserver
from relaypush.http.operations import operations_route_handlers, package_version
from relaypush.http.ratelimit import RateLimiter
from relaypush.http.relay import RelayContext, relay_route_handlers
from relaypush.http.tenants import TenantsContext, tenant_route_handlers
from relaypush.metrics import REGISTRY, Registry
from relaypush.service import RelayService
from relaypush.tenancy.checks import CredentialChecker
from relaypush.tenancy.service import CredentialStore, DefaultTenant, TenantService

__all__ = ["create_app"]


def create_app(
    *,
    settings: Settings,
    service: RelayService,
    metrics: Registry = REGISTRY,
    ready: Callable[[], Awaitable[bool]] | None = None,
    replay_guard: Once | None = None,
    event_log: EventLog | None = None,
    credentials: CredentialStore | None = None,
) -> Litestar:
    """The relay API over ``service``, configured by ``settings``.

    ``metrics`` receives the request metrics and is served at ``/metrics``; ``ready``, when
    given, is asked by ``/health``, which answers 503 while it returns False. With
    ``event_log``, the audit admin routes (:mod:`relaypush.http.admin`) read it.
    ``credentials`` stores tenants' sealed credentials
    (:func:`relaypush.tenancy.store.open_credential_store`); without it, credential uploads
    answer 503.
    """
    verifier = (
        RelaySignatureVerifier(settings.relay_public_key, max_age=settings.signature_max_age)
        if settings.relay_public_key
        else None
    )
    relay = RelayContext(
        service=service,
        audience=settings.base_url,
        require_client_auth=settings.require_client_auth,
        verifier=verifier,
        replay_guard=replay_guard,
        webpush_hosts=settings.webpush_hosts,
        client_jwt_max_age=settings.client_jwt_max_age,
    )
    limiter = RateLimiter(settings.rate_limit_per_minute, trusted_proxies=settings.trusted_proxies)
    default_tenant = DefaultTenant.from_settings(settings)
    tenants = TenantsContext(
        service=TenantService(
            service.log,
            tenants=service.tenants,
            credentials=credentials,
            checker=CredentialChecker(
                fcm_token_hosts=settings.fcm_token_hosts,
                fcm_verify=settings.fcm_ca_file,
                timeout=settings.send_timeout,
                metrics=metrics,
            ),
            base_url=settings.base_url,
            default=default_tenant,
        ),
        auth=TenantAuthorizer(
            admin_token=settings.admin_token, jwt_secret=settings.tenant_jwt_secret
        ),
    )
    app = Litestar(
        route_handlers=[
            *operations_route_handlers(registry=metrics, ready=ready),
            *relay_route_handlers(rate_limit=limiter.guard),
            *tenant_route_handlers(rate_limit=limiter.guard),
            *demo_route_handlers(vapid_public_key=default_tenant.vapid_public_key),
            *(
                admin_route_handlers(
                    event_log=event_log,
                    admin_token=settings.admin_token,
                    service=service,
                    rate_limit=limiter.guard,
                )
                if event_log is not None
                else ()
            ),
        ],
        dependencies={
            "relay": Provide(lambda: relay, sync_to_thread=False, use_cache=True),
            "tenants": Provide(lambda: tenants, sync_to_thread=False, use_cache=True),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_size,
        openapi_config=OpenAPIConfig(
            title="relaypush",
            version=package_version(),
            description="A relay-compatible push server: register clients, push to them.",
            path="/schema",
        ),
        logging_config=None,
        debug=False,
    )
    app.asgi_handler = RequestObserver(
        FastPush(TenantCors(app.asgi_handler), relay, max_body_size=settings.max_body_size),
        metrics,
    )
    return app
