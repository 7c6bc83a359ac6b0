"""docs/audit.md's stand-alone verifier runs, and agrees with ``relaypush audit verify``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from eventstore import InMemoryEventLog
from relaypush.audit import Chainer, SigningKey, export_line, read_export, verify
from tests.audit_story import STORY, append_story

AUDIT_MD = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
KEY = SigningKey.from_hex("55" * 32)


def script() -> str:
    text = AUDIT_MD.read_text(encoding="utf-8")
    section = text[text.index("### Verifying without relaypush") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no python block under 'Verifying without relaypush'"
    return match.group(1)


def run(tmp_path: Path, lines: list[bytes]) -> str:
    program, export = tmp_path / "verify_export.py", tmp_path / "log.jsonl"
    program.write_text(script())
    export.write_bytes(b"".join(lines))
    done = subprocess.run(
        [sys.executable, str(program), str(export), KEY.public_key.hex],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


async def test_the_documented_script_verifies_an_export(tmp_path: Path) -> None:
    log = InMemoryEventLog()
    await append_story(log)
    await Chainer(log, KEY, every_events=5).catch_up()
    await append_story(log, STORY[:2])
    lines = [export_line(r) async for r in log.read()]
    report = await verify(read_export(lines), [KEY.public_key])
    assert run(tmp_path, lines) == (
        f"OK: {len(lines)} events, protected up to {report.protected_upto}, head {report.head}"
    )
    assert report.protected_upto == 17

    edited = [json.loads(line) for line in lines]
    edited[3]["data"] = edited[3]["data"].replace("m1", "m9")
    tampered = [json.dumps(line).encode() + b"\n" for line in edited]
    assert run(tmp_path, tampered).startswith("BROKEN")
