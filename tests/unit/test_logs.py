"""Logs never show a traceback's local variables, in either format, from either logger."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Literal

import pytest
import structlog

from relaypush.logs import configure_logging

SECRET = "sk_live_5d1f0c83a6b24e0f9b7aa3c1e2d4f6a8"


CARD = "4242424242424242"


def _charge(card: str) -> None:
    api_key = SECRET  # a local variable holding a secret, as any adapter has one
    refused = f"the gateway refused card {card[-4:]} ({len(api_key)} byte key)"
    raise RuntimeError(refused)


@pytest.fixture(name="logging_restored")
def fx_logging_restored() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back as the test session had it."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("logging_restored")
@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("via", ["structlog", "logging"])
def test_a_logged_traceback_shows_no_locals(
    fmt: Literal["json", "console"],
    via: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(fmt)
    try:
        _charge(CARD)
    except RuntimeError:
        if via == "structlog":
            structlog.get_logger("relaypush.test").exception("charge_failed")
        else:
            logging.getLogger("relaypush.test").exception("charge failed")
    err = capsys.readouterr().err
    assert "the gateway refused card 4242" in err  # the exception and its traceback are there
    assert "_charge" in err
    assert "RuntimeError" in err
    assert SECRET not in err
    assert CARD not in err  # the argument is a local too
