"""Checking uploaded credentials before they are stored: a bad upload is a 400 that says why.

APNs (``POST /tenants/{id}/apns``, multipart) takes ``apns_topic`` and either

- token authentication: ``apns_pkcs8_pem`` (the ``.p8`` key), ``apns_key_id``, ``apns_team_id``;
  the key must be a P-256 private key and sign an ES256 provider token, or
- certificate authentication: ``apns_certificate`` (the ``.p12``, or base64 of it when sent as
  a text field) and ``apns_certificate_password``; it must open with the password, hold a
  certificate and its matching private key, be valid now, and, when the certificate names its
  bundle id (the subject's UID, as Apple's do), serve ``apns_topic``.

FCM (``POST /tenants/{id}/fcm_v1``) takes ``credentials``, a service-account JSON document whose
``token_uri`` is https on an allowed host (``RELAYPUSH_FCM_TOKEN_HOSTS``); it must obtain an
access token there for the FCM scope.

Web Push (``POST /tenants/{id}/webpush``) takes ``vapid_private_key``, a PEM P-256 private key
(PKCS#8 ``PRIVATE KEY`` or SEC 1 ``EC PRIVATE KEY``), and ``subject``, a ``mailto:`` or ``https:``
URL; the key must sign a VAPID token.

Checks are split in two: :meth:`CredentialChecker.shape_apns` and :meth:`shape_fcm` look at the
fields alone (what is missing or malformed, all reported at once); :meth:`check_apns` and
:meth:`check_fcm` then prove the credentials work, which for FCM means a request to the token
endpoint (in a worker thread). No secret ever appears in an error's description.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import msgspec
from cryptography import x509
from cryptography.x509.oid import NameOID
from google.oauth2 import service_account

from relaypush.delivery.apns_auth import ApnsCertificate, ProviderToken
from relaypush.delivery.fcm import FCM_SCOPE
from relaypush.delivery.google_oauth import ServiceAccountTokens, TokenUnavailable
from relaypush.delivery.outcomes import Retry
from relaypush.delivery.registry import token_host_allowed
from relaypush.delivery.vapid import VapidKey, check_subject
from relaypush.domain.credentials import ApnsCertificateFile, ApnsTokenKey, FcmServiceAccount
from relaypush.domain.credentials import VapidKey as VapidCredential
from relaypush.domain.errors import FieldError, InvalidRequest
from relaypush.metrics import REGISTRY, Registry
from relaypush.tenancy.pkcs12 import kdf_costs, pem_blocks

__all__ = [
    "APNS_FIELDS",
    "FCM_FIELD",
    "MAX_KDF_ITERATIONS",
    "VAPID_FIELDS",
    "ApnsForm",
    "CredentialChecker",
]

APNS_FIELDS: Final = (
    "apns_topic",
    "apns_certificate",
    "apns_certificate_password",
    "apns_pkcs8_pem",
    "apns_key_id",
    "apns_team_id",
)
FCM_FIELD: Final = "credentials"
VAPID_FIELDS: Final = ("vapid_private_key", "subject")

T = TypeVar("T")

_TOPIC: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_APPLE_ID: Final = re.compile(r"[A-Z0-9]{10}")
_MAX_KEY: Final = 16 * 1024
_MAX_CERTIFICATE: Final = 64 * 1024
_MAX_SERVICE_ACCOUNT: Final = 64 * 1024
#: Most key-derivation iterations a .p12 may ask for, all its derivations together (2048 each is
#: usual): opening holds the GIL for about half a microsecond per iteration.
MAX_KDF_ITERATIONS: Final = 500_000
_GOOGLE_HOSTS: Final = (".googleapis.com", ".google.com")
_REQUIRED_ACCOUNT_FIELDS: Final = ("project_id", "private_key", "client_email", "token_uri")


@dataclass(frozen=True, slots=True)
class ApnsForm:
    """The APNs upload's parts: text fields as ``str``, file parts as ``bytes``."""

    topic: str | bytes | None = None
    certificate: str | bytes | None = None
    certificate_password: str | bytes | None = None
    pkcs8_pem: str | bytes | None = None
    key_id: str | bytes | None = None
    team_id: str | bytes | None = None

    @classmethod
    def from_parts(cls, parts: Mapping[str, str | bytes]) -> ApnsForm:
        return cls(
            topic=parts.get("apns_topic"),
            certificate=parts.get("apns_certificate"),
            certificate_password=parts.get("apns_certificate_password"),
            pkcs8_pem=parts.get("apns_pkcs8_pem"),
            key_id=parts.get("apns_key_id"),
            team_id=parts.get("apns_team_id"),
        )


def _refuse(errors: Iterable[FieldError]) -> InvalidRequest:
    return InvalidRequest(fields=tuple(errors))


def _text(value: str | bytes | None) -> str | None:
    """A part as text (a file part holding UTF-8 text is text too); None when absent or empty."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return "\ufffd"  # not text: the field check names it
    value = value.strip()
    return value or None


def _is_p12_like(data: bytes) -> bool:
    """Whether ``data`` starts like DER (a PKCS#12 file is one DER SEQUENCE)."""
    return data[:1] == b"\x30"


class CredentialChecker:
    """Checks uploads; ``fcm_verify`` is the CA file for token endpoints (stand-ins, proxies)."""

    def __init__(
        self,
        *,
        fcm_token_hosts: Iterable[str] = ("oauth2.googleapis.com",),
        fcm_verify: Path | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        metrics: Registry = REGISTRY,
    ) -> None:
        self._token_hosts = tuple(fcm_token_hosts)
        self._verify = fcm_verify
        self._timeout = timeout
        self._clock = clock
        self._metrics = metrics

    # APNs

    def shape_apns(self, form: ApnsForm) -> None:
        """Raise ``InvalidRequest`` naming every missing or malformed field."""
        errors: list[FieldError] = []
        topic = _text(form.topic)
        if topic is None:
            errors.append(FieldError("apns_topic", "is required: the app's bundle id"))
        elif _TOPIC.fullmatch(topic) is None:
            errors.append(
                FieldError(
                    "apns_topic",
                    "must be the app's bundle id: 1 to 255 characters of A-Z, a-z, 0-9, "
                    "'.', '_' and '-'",
                )
            )
        has_certificate = bool(form.certificate)
        has_key = bool(form.pkcs8_pem)
        if has_certificate and has_key:
            why = "send a .p12 certificate or a .p8 key, not both"
            errors += [FieldError("apns_certificate", why), FieldError("apns_pkcs8_pem", why)]
        elif not has_certificate and not has_key:
            why = (
                "required: apns_certificate (.p12) with apns_certificate_password, or "
                "apns_pkcs8_pem (.p8) with apns_key_id and apns_team_id"
            )
            errors += [FieldError("apns_certificate", why), FieldError("apns_pkcs8_pem", why)]
        elif has_key:
            errors += self._shape_token(form)
        else:
            errors += self._shape_certificate(form)
        if errors:
            raise _refuse(errors)

    @staticmethod
    def _shape_token(form: ApnsForm) -> list[FieldError]:
        errors: list[FieldError] = []
        for name, value in (("apns_key_id", form.key_id), ("apns_team_id", form.team_id)):
            text = _text(value)
            what = "key id" if name == "apns_key_id" else "team id"
            if text is None:
                errors.append(FieldError(name, f"is required with apns_pkcs8_pem: the {what}"))
            elif _APPLE_ID.fullmatch(text) is None:
                errors.append(FieldError(name, f"an Apple {what} is 10 characters of A-Z, 0-9"))
        pem = form.pkcs8_pem
        size = len(pem) if pem is not None else 0
        if size > _MAX_KEY:
            errors.append(FieldError("apns_pkcs8_pem", f"over {_MAX_KEY} bytes: not a .p8 key"))
        return errors

    @staticmethod
    def _shape_certificate(form: ApnsForm) -> list[FieldError]:
        errors: list[FieldError] = []
        certificate = form.certificate
        if certificate is not None and len(certificate) > _MAX_CERTIFICATE:
            what = f"over {_MAX_CERTIFICATE} bytes: not an APNs certificate"
            errors.append(FieldError("apns_certificate", what))
        password = form.certificate_password
        if isinstance(password, bytes):
            try:
                password.decode("utf-8")
            except UnicodeDecodeError:
                errors.append(FieldError("apns_certificate_password", "must be UTF-8 text"))
        return errors

    async def check_apns(self, form: ApnsForm) -> ApnsTokenKey | ApnsCertificateFile:
        """The credentials of a well-shaped ``form``, proven to work; ``InvalidRequest`` if not."""
        self.shape_apns(form)
        topic = _text(form.topic)
        assert topic is not None
        if form.pkcs8_pem:
            return self._check_token(form, topic)
        data, password = _certificate_parts(form)
        _refuse_costly(data)
        return await _off_the_loop(
            lambda: self._check_certificate(data, password, topic),
            within=self._timeout,
            too_slow=FieldError(
                "apns_certificate",
                f"the .p12 could not be opened within {self._timeout:g} s",
            ),
        )

    def _check_token(self, form: ApnsForm, topic: str) -> ApnsTokenKey:
        key_id, team_id = _text(form.key_id), _text(form.team_id)
        assert key_id is not None
        assert team_id is not None
        pem_text = _text(form.pkcs8_pem)
        bad = FieldError(
            "apns_pkcs8_pem",
            "not an APNs signing key: expected the .p8 file, a PEM 'PRIVATE KEY' of a P-256 "
            "(ES256) key",
        )
        if pem_text is None or "\ufffd" in pem_text or "PRIVATE KEY" not in pem_text:
            raise _refuse([bad])
        pem = pem_text.encode() + b"\n"
        try:
            token = ProviderToken.from_pem(pem, key_id, team_id, clock=self._clock)
            token.header()  # signs an ES256 provider token, as every send will
        except ValueError as exc:
            raise _refuse(
                [FieldError("apns_pkcs8_pem", f"{bad.description} ({_reason(exc)})")]
            ) from None
        return ApnsTokenKey(topic=topic, key_id=key_id, team_id=team_id, pkcs8_pem=pem.decode())

    def _check_certificate(self, data: bytes, password: str, topic: str) -> ApnsCertificateFile:
        """Open the .p12 and prove it usable (in a thread of its own: :func:`_off_the_loop`)."""
        try:
            certificate = ApnsCertificate.load(data, password or None)
        except ValueError:
            if _is_p12_like(data):
                field = FieldError(
                    "apns_certificate_password",
                    "the .p12 does not open with this password (or it is not a PKCS#12 file)",
                )
            else:
                field = FieldError(
                    "apns_certificate", "not a .p12 (PKCS#12) certificate with its private key"
                )
            raise _refuse([field]) from None
        now = self._clock()
        if certificate.not_after.timestamp() <= now:
            raise _refuse(
                [
                    FieldError(
                        "apns_certificate",
                        f"the certificate expired at {certificate.not_after.isoformat()}",
                    )
                ]
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            certificate.load_into(context)
        except (ssl.SSLError, ValueError):
            raise _refuse(
                [
                    FieldError(
                        "apns_certificate",
                        "the certificate and the private key in the .p12 do not belong together",
                    )
                ]
            ) from None
        bundle = _bundle_id(certificate.chain_pem)
        if bundle is not None and topic != bundle and not topic.startswith(bundle + "."):
            raise _refuse(
                [
                    FieldError(
                        "apns_topic",
                        f"the certificate is for bundle id {bundle!r}, not {topic!r}",
                    )
                ]
            )
        return ApnsCertificateFile(topic=topic, p12=data, password=password)

    # FCM

    def shape_fcm(self, document: str | bytes | None) -> dict[str, Any]:
        """The service account as a JSON object, if it is one relaypush may use."""
        if document is None or not document:
            raise _refuse([_fcm_field("is required: the Firebase service-account JSON file")])
        if len(document) > _MAX_SERVICE_ACCOUNT:
            raise _refuse([_fcm_field(f"over {_MAX_SERVICE_ACCOUNT} bytes: not a service account")])
        try:
            # msgspec, not json: it refuses invalid UTF-8 and lone surrogates (text that cannot
            # be encoded again), and nesting too deep is a RecursionError from either
            info = msgspec.json.decode(document)
        except (msgspec.MsgspecError, ValueError, RecursionError):
            raise _refuse([_fcm_field("is not JSON: expected a service-account file")]) from None
        if not isinstance(info, dict):
            raise _refuse([_fcm_field("must be a JSON object: a service-account file")])
        if info.get("type") != "service_account":
            raise _refuse([_fcm_field('must be a service account ("type": "service_account")')])
        missing = [
            name
            for name in _REQUIRED_ACCOUNT_FIELDS
            if not isinstance(info.get(name), str) or not info[name]
        ]
        if missing:
            raise _refuse([_fcm_field("lacks " + ", ".join(missing))])
        token_uri = str(info["token_uri"])
        if not token_host_allowed(token_uri, self._token_hosts):
            host = urlsplit(token_uri).hostname or token_uri
            allowed = ", ".join(self._token_hosts) or "none"
            raise _refuse(
                [
                    _fcm_field(
                        f"token_uri must be https on an allowed host ({allowed}), not {host!r}"
                    )
                ]
            )
        return info

    async def check_fcm(self, document: str | bytes | None) -> FcmServiceAccount:
        """The service account, once it obtained an access token; ``InvalidRequest`` if not."""
        info = self.shape_fcm(document)
        token_uri = str(info["token_uri"])
        host = urlsplit(token_uri).hostname or ""
        claims = {} if host.endswith(_GOOGLE_HOSTS) else {"aud": token_uri}
        try:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=[FCM_SCOPE], additional_claims=claims
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise _refuse(
                [_fcm_field(f"is not a usable service account ({_reason(exc)})")]
            ) from None
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(self._verify)) if self._verify else True
        )
        tokens = ServiceAccountTokens(
            credentials, verify=verify, timeout=self._timeout, metrics=self._metrics
        )
        try:
            await tokens.get()
        except TokenUnavailable as exc:
            if isinstance(exc.outcome, Retry):
                why = f"no access token could be obtained from token_uri: {exc.outcome.reason}"
            else:
                why = f"the token endpoint refused the service account: {exc.outcome.reason}"
            raise _refuse([_fcm_field(why)]) from None
        finally:
            tokens.close()
        document_text = json.dumps(info, sort_keys=True, separators=(",", ":"))
        return FcmServiceAccount(project_id=str(info["project_id"]), document=document_text)

    # Web Push

    @staticmethod
    def shape_webpush(private_key: str | bytes | None, subject: str | bytes | None) -> None:
        """Raise ``InvalidRequest`` naming every missing or malformed field."""
        errors: list[FieldError] = []
        key_text = _text(private_key)
        if key_text is None:
            errors.append(
                FieldError("vapid_private_key", "is required: the VAPID key pair's PEM private key")
            )
        elif len(key_text) > _MAX_KEY or "PRIVATE KEY" not in key_text:
            errors.append(FieldError("vapid_private_key", _NOT_VAPID_KEY))
        subject_text = _text(subject)
        if subject_text is None:
            errors.append(FieldError("subject", "is required: a mailto: or https: URL"))
        else:
            try:
                check_subject(subject_text)
            except ValueError as exc:
                errors.append(FieldError("subject", str(exc)))
        if errors:
            raise _refuse(errors)

    def check_webpush(
        self, private_key: str | bytes | None, subject: str | bytes | None
    ) -> VapidCredential:
        """The VAPID key pair, once it signed a token; ``InvalidRequest`` if not."""
        self.shape_webpush(private_key, subject)
        key_text, subject_text = _text(private_key), _text(subject)
        assert key_text is not None
        assert subject_text is not None
        try:
            key = VapidKey.from_pem(key_text.encode() + b"\n", subject_text, clock=self._clock)
            key.authorization("https://push.example")  # signs a VAPID token, as every send will
        except ValueError as exc:
            raise _refuse(
                [FieldError("vapid_private_key", f"{_NOT_VAPID_KEY} ({_reason(exc)})")]
            ) from None
        return VapidCredential(
            private_key_pem=key.private_pem(), subject=subject_text, public_key=key.public_key
        )


_NOT_VAPID_KEY: Final = (
    "not a VAPID key: expected a PEM private key ('PRIVATE KEY' or 'EC PRIVATE KEY') of a P-256 "
    "key pair (openssl ecparam -name prime256v1 -genkey -noout)"
)


def _certificate_parts(form: ApnsForm) -> tuple[bytes, str]:
    """The .p12's bytes (a text field holds base64 of it) and its password."""
    data = form.certificate
    assert data is not None
    if isinstance(data, str):  # a text field: base64 of the .p12
        try:
            data = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise _refuse(
                [
                    FieldError(
                        "apns_certificate",
                        "a .p12 sent as a text field must be base64; or send it as a file "
                        "(curl -F apns_certificate=@cert.p12)",
                    )
                ]
            ) from None
    password_value = form.certificate_password
    password = (
        password_value.decode("utf-8")
        if isinstance(password_value, bytes)
        else (password_value or "")
    )
    return data, password


def _refuse_costly(data: bytes) -> None:
    """Refuse a .p12 (or PEM) whose key derivations ask for more than
    :data:`MAX_KDF_ITERATIONS` in all, read from its structure before any is run."""
    try:
        blocks = pem_blocks(data) if b"-----BEGIN" in data else [data]
        costs = [cost for block in blocks for cost in kdf_costs(block)]
    except ValueError:
        raise _refuse(
            [
                FieldError(
                    "apns_certificate", "not a .p12 (PKCS#12) certificate with its private key"
                )
            ]
        ) from None
    total = sum(costs)
    if total > MAX_KDF_ITERATIONS:
        raise _refuse(
            [
                FieldError(
                    "apns_certificate",
                    f"the .p12 asks for {total} key-derivation iterations in all, more than the "
                    f"{MAX_KDF_ITERATIONS} allowed; export it again with fewer (2048 is usual: "
                    "openssl pkcs12 -export -iter 2048 -maciter ...)",
                )
            ]
        )


async def _off_the_loop(work: Callable[[], T], *, within: float, too_slow: FieldError) -> T:
    """``work()`` in a daemon thread of its own, refused with ``too_slow`` after ``within`` s.

    A daemon thread, not the loop's executor: work that outlives its timeout is abandoned
    without holding up the executor's other users or the process's exit.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, failure: BaseException | None) -> None:
        if done.done():  # timed out and abandoned
            return
        if failure is not None:
            done.set_exception(failure)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        failure: BaseException | None = None
        try:
            result = work()
        except BaseException as exc:  # handed to the waiting coroutine
            failure = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, failure)

    threading.Thread(target=run, name="relaypush-credential-check", daemon=True).start()
    try:
        async with asyncio.timeout(within):
            return await asyncio.shield(done)
    except TimeoutError:
        raise _refuse([too_slow]) from None


def _fcm_field(description: str) -> FieldError:
    return FieldError(FCM_FIELD, description)


def _reason(exc: Exception) -> str:
    """An exception's message, cut short: library messages about keys never hold the key."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _bundle_id(chain_pem: bytes) -> str | None:
    """The bundle id an APNs certificate names (its subject's UID), if it names one."""
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except (ValueError, IndexError):
        return None
    uids = leaf.subject.get_attributes_for_oid(NameOID.USER_ID)
    value = uids[0].value if uids else None
    return value if isinstance(value, str) else None
