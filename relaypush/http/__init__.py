"""The HTTP API: the relay contract's routes in litestar, errors in the relay envelope."""

from relaypush.http.app import create_app

__all__ = ["create_app"]
